"""In-memory test doubles of the CMP server's collaborators (csm's own interfaces)."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from cryptography import x509

from ca.cmp import IssuedCertificate, IssueRequest, Requester, RootCaKeyUpdate, Transaction
from client_sdk.cmp import RevocationReason, errors
from tests.client_sdk.cmptools import TestPki


class MemoryIssuer:
    def __init__(self, pki: TestPki) -> None:
        self.pki = pki
        self.issued: dict[int, x509.Certificate] = {}
        self.revoked: dict[int, RevocationReason | None] = {}
        self.requests: list[IssueRequest] = []
        self.refuse: errors.CmpError | Exception | None = None
        self.root_update: RootCaKeyUpdate | None = None

    def issue(self, request: IssueRequest, *,
              before_store: Callable[[IssuedCertificate], None] | None = None) -> IssuedCertificate:
        self.requests.append(request)
        if self.refuse is not None:
            raise self.refuse
        exts = [e for e in request.extensions if not isinstance(e.value, x509.UnrecognizedExtension)]
        cert = self.pki.issue(request.subject, request.public_key, extensions=exts)  # type: ignore[arg-type]
        if before_store is not None:
            before_store(IssuedCertificate(cert))
        self.issued[cert.serial_number] = cert
        return IssuedCertificate(cert)

    def revoke(self, serial_number: int, issuer: x509.Name, reason: RevocationReason | None,
               requester: Requester) -> None:
        if issuer != self.pki.ca_name or serial_number not in self.issued:
            raise errors.BadCertId("unknown certificate")
        if serial_number in self.revoked:
            raise errors.CertRevoked("already revoked")
        self.revoked[serial_number] = reason

    def register(self, cert: x509.Certificate) -> None:
        """Make a certificate issued outside CMP known (for rr)."""
        self.issued[cert.serial_number] = cert

    def is_revoked(self, certificate: x509.Certificate) -> bool:
        return certificate.serial_number in self.revoked

    def ca_certificates(self) -> tuple[x509.Certificate, ...]:
        return (self.pki.ca_cert,)

    def root_ca_key_update(self) -> RootCaKeyUpdate | None:
        return self.root_update


class MemoryTransactions:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: dict[tuple[str, bytes], Transaction] = {}

    def begin(self, transaction: Transaction) -> None:
        key = (transaction.profile, transaction.transaction_id)
        with self._lock:
            if key in self.rows:
                raise errors.TransactionIdInUse("transactionID already used")
            self.rows[key] = transaction

    def lookup(self, profile: str, transaction_id: bytes) -> Transaction | None:
        with self._lock:
            return self.rows.get((profile, transaction_id))

    def update(self, transaction: Transaction) -> None:
        with self._lock:
            self.rows[(transaction.profile, transaction.transaction_id)] = transaction

    def finish(self, transaction: Transaction) -> None:
        self.update(transaction)

    def in_use(self, profile: str, transaction_id: bytes) -> bool:
        with self._lock:
            return (profile, transaction_id) in self.rows

    staged: tuple[Transaction, bool] | None = None

    def stage(self, transaction: Transaction, *, new: bool) -> None:
        self.staged = (transaction, new)  # no units of work here: written by flush_staged

    def flush_staged(self) -> None:
        if self.staged is not None:
            txn, new = self.staged
            self.staged = None
            (self.begin if new else self.update)(txn)

    def discard_staged(self) -> None:
        self.staged = None

    def only(self) -> Any:
        (row,) = self.rows.values()
        return row
