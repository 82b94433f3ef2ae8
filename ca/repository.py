"""Persistence seams owned by the CA engine (the service implements them with SQL;
:mod:`ca.memory` is the in-memory implementation for embedding and tests).

Contract common to both Protocols:

* Every method is atomic on its own; the engine never relies on a transaction spanning calls.
  (A SQL implementation may still run engine calls inside the caller's unit of work.)
* Records go in and come out as the frozen dataclasses of :mod:`ca.types`; what comes out equals
  what went in (times are aware UTC with whole seconds).
* Errors are the :mod:`ca.errors` leaves named below, nothing else for expected conditions.
* Serial numbers are up to 159-bit ints (store as NUMERIC(49) or a decimal string).
"""
from __future__ import annotations

import datetime as dt
from typing import Protocol, runtime_checkable

from .profiles import Profile
from .types import (
    CaRecord,
    CertificateQuery,
    CertificateRecord,
    CrlRecord,
    IssuanceCount,
    Revocation,
    SignatureCount,
    SignatureKind,
    UsageRecord,
)


@runtime_checkable
class CaRepository(Protocol):
    """CAs, their profiles and their CRLs."""

    def add_ca(self, record: CaRecord) -> None:
        """Store a new CA. Raises CaExists if the name is taken (unique constraint on name)."""

    def get_ca(self, name: str) -> CaRecord:
        """Raises CaNotFound."""

    def list_cas(self) -> list[CaRecord]:
        """All CAs, ordered by name."""

    def put_profile(self, profile: Profile) -> None:
        """Insert or replace the profile keyed by (profile.ca, profile.name). Store
        ``profile.to_dict()`` as JSON and restore with ``Profile.from_dict``."""

    def get_profile(self, ca_name: str, name: str) -> Profile:
        """Raises ProfileNotFound."""

    def list_profiles(self, ca_name: str | None = None) -> list[Profile]:
        """Profiles of one CA (or of all), ordered by (ca, name)."""

    def delete_profile(self, ca_name: str, name: str) -> None:
        """Raises ProfileNotFound. Certificates issued under it keep the profile name."""

    def next_crl_number(self, ca_name: str) -> int:
        """Atomically allocate the CA's next CRL number: 1, 2, 3... strictly increasing, never
        reused, even across processes (SQL: UPDATE ... SET crl_number = crl_number + 1
        RETURNING crl_number)."""

    def save_crl(self, crl: CrlRecord) -> None:
        """Keep ``crl`` as the CA's latest unless a CRL with a higher number is stored already
        (then ignore it: a slower concurrent generator must not roll the CRL back)."""

    def latest_crl(self, ca_name: str) -> CrlRecord | None:
        """The stored CRL with the highest number, if any."""


@runtime_checkable
class CertificateRepository(Protocol):
    """Issued certificates, their revocation state, usage statements and counters."""

    def add(self, record: CertificateRecord) -> None:
        """Store a newly issued certificate. Raises DuplicateSerial if ``record.serial`` is
        taken (unique constraint on serial, across all CAs); the engine then retries with a
        fresh serial."""

    def get(self, serial: int) -> CertificateRecord:
        """Raises UnknownSerial."""

    def search(self, query: CertificateQuery) -> list[CertificateRecord]:
        """Records matching every given filter of ``query`` (see CertificateQuery for the
        semantics), newest first, paged with limit/offset."""

    def set_revocation(self, serial: int, revocation: Revocation | None, *,
                       expected: Revocation | None) -> CertificateRecord:
        """Compare-and-set the revocation state: if the stored state equals ``expected``, store
        ``revocation`` (None: not revoked, i.e. released from hold), bump the issuing CA's
        revocation epoch and return the updated record. Raises ConcurrentUpdate if the stored
        state differs, UnknownSerial if there is no such certificate.
        (SQL: UPDATE ... WHERE serial = ? AND <revocation columns> IS NOT DISTINCT FROM ?)."""

    def list_revoked(self, ca_name: str, *, not_expired_at: dt.datetime) -> list[CertificateRecord]:
        """Revoked (incl. on-hold) certificates of CA ``ca_name`` whose notAfter is at or after
        ``not_expired_at``, ordered by serial."""

    def revocation_epoch(self, ca_name: str) -> int:
        """A counter that changes whenever the revocation state of one of the CA's certificates
        changes (0 before any); CRL publishers compare it with the epoch their CRL reflects."""

    def add_usage(self, usage: UsageRecord) -> None:
        """Insert or replace the usage statement keyed by (serial, host)."""

    def list_usage(self, *, ca_name: str | None = None, serial: int | None = None,
                   limit: int = 1000) -> list[UsageRecord]:
        """Usage statements, newest first."""

    def count_signature(self, ca_name: str, key_label: str, kind: SignatureKind, n: int = 1) -> None:
        """Add ``n`` to the counter (ca_name, key_label, kind) (SQL: an upsert incrementing)."""

    def signature_counts(self, ca_name: str | None = None) -> list[SignatureCount]:
        """Non-zero signature counters, ordered by (ca, key label, kind)."""

    def issuance_counts(self, *, ca_name: str | None, now: dt.datetime,
                        expiring_within: dt.timedelta) -> list[IssuanceCount]:
        """Counters grouped by (CA, profile, requester), ordered so: ``issued`` = certificates
        issued (renewals included), ``renewed`` = those with ``renewal_of`` set, ``revoked`` =
        those revoked (incl. on hold), ``expiring`` = not revoked and ``now <= notAfter <
        now + expiring_within``."""


__all__ = ["CaRepository", "CertificateRepository"]
