"""What the CMP server needs from the rest of csm: narrow Protocols and frozen values owned here.

The service implements :class:`Issuer` with the CA engine and :class:`TransactionStore` with SQL;
tests use in-memory doubles. Collaborators signal a refusal by raising a
:class:`client_sdk.cmp.errors.CmpError` leaf (e.g. ``NotAuthorized``, ``BadCertTemplate``,
``CertRevoked``, ``BadCertId``); any other exception becomes ``systemFailure`` without details.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from client_sdk.cmp import BodyType, CertTemplate, HashAlgorithm, MacAlgorithm, RevocationReason


class AuthKind(enum.Enum):
    MAC = "mac"
    SIGNATURE = "signature"
    NONE = "none"


@dataclasses.dataclass(frozen=True)
class Requester:
    """Who sent an authenticated request (handed to the Issuer for policy and audit)."""

    profile: str
    auth: AuthKind
    sender: x509.GeneralName
    sender_kid: bytes | None = None
    certificate: x509.Certificate | None = None  # the protection certificate (signature auth)

    def same_as(self, other: Requester) -> bool:
        return (self.auth, self.sender_kid, self.certificate) == (other.auth, other.sender_kid, other.certificate)


@dataclasses.dataclass(frozen=True)
class IssueRequest:
    """One certificate to issue (from ir/cr/kur/p10cr)."""

    profile: str
    body_type: BodyType
    subject: x509.Name
    public_key: PublicKeyTypes
    requester: Requester
    extensions: tuple[x509.Extension[x509.ExtensionType], ...] = ()
    not_before: _dt.datetime | None = None
    not_after: _dt.datetime | None = None
    old_certificate: x509.Certificate | None = None  # kur: the certificate being updated
    csr: x509.CertificateSigningRequest | None = None  # p10cr


@dataclasses.dataclass(frozen=True)
class IssuedCertificate:
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()  # intermediates up to (excluding) the root


@dataclasses.dataclass(frozen=True)
class RootCaKeyUpdate:
    """RFC 9480 §2.4 RootCaKeyUpdateContent."""

    new_with_new: x509.Certificate
    new_with_old: x509.Certificate | None = None
    old_with_new: x509.Certificate | None = None


@runtime_checkable
class Issuer(Protocol):
    """The CA engine as the CMP server sees it."""

    def issue(self, request: IssueRequest, *,
              before_store: Callable[[IssuedCertificate], None] | None = None) -> IssuedCertificate:
        """Issue; ``before_store`` is called with the signed certificate (and its chain) before the
        certificate is recorded, in the caller's context, so that what the caller stages there
        (:meth:`TransactionStore.stage`) can be written in the certificate's own unit of work.
        If it raises, nothing is recorded and the exception propagates."""

    def revoke(self, serial_number: int, issuer: x509.Name, reason: RevocationReason | None,
               requester: Requester) -> None:
        """Revoke; raise BadCertId (unknown certificate) or CertRevoked (already revoked)."""

    def is_revoked(self, certificate: x509.Certificate) -> bool: ...

    def ca_certificates(self) -> tuple[x509.Certificate, ...]:
        """Issuing CA first, root last (genm caCerts, ip caPubs uses the self-signed ones)."""

    def root_ca_key_update(self) -> RootCaKeyUpdate | None: ...


class TransactionState(enum.Enum):
    PENDING_APPROVAL = "pending-approval"  # waiting for an operator; the client polls
    APPROVED = "approved"  # set by the service; next pollReq issues
    REJECTED = "rejected"  # set by the service; next pollReq answers a rejection
    WAITING_CONFIRM = "waiting-confirm"  # certificate issued, certConf expected
    FINISHED = "finished"  # kept for replay detection (transactionIdInUse)


@dataclasses.dataclass(frozen=True)
class Transaction:
    transaction_id: bytes
    profile: str
    state: TransactionState
    requester: Requester
    request_type: BodyType
    server_nonce: bytes  # our last senderNonce: the client's next recipNonce must echo it
    created: _dt.datetime
    cert_req_id: int = 0
    issue_request: IssueRequest | None = None
    certificate: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    confirm_deadline: _dt.datetime | None = None
    implicit_confirm: bool = False
    reason: str = ""


class TransactionStore(Protocol):
    """Per-profile CMP transactions keyed by transactionID."""

    def begin(self, transaction: Transaction) -> None:
        """Store a new transaction atomically; raise TransactionIdInUse if the ID exists (in any state)."""

    def lookup(self, profile: str, transaction_id: bytes) -> Transaction | None: ...

    def update(self, transaction: Transaction) -> None: ...

    def finish(self, transaction: Transaction) -> None:
        """Mark finished; the ID must stay known long enough to refuse replays."""

    def in_use(self, profile: str, transaction_id: bytes) -> bool:
        """Whether a transaction with this ID exists (in any state): a cheap check made before
        any work for a replayed ID; the write that creates a transaction stays the authority."""

    def stage(self, transaction: Transaction, *, new: bool) -> None:
        """Store ``transaction`` (``new``: create it, else update it) with the exchange's next
        write - the issued certificate's - in that write's unit of work if the store can (a new
        one whose ID is taken then fails that write with TransactionIdInUse), otherwise now.
        Called from the issuer's ``before_store``; a later call, or a direct write of a
        transaction (begin, update, finish), replaces what was staged."""

    def flush_staged(self) -> None:
        """Write what :meth:`stage` left if no write carried it (nothing when one did)."""

    def discard_staged(self) -> None:
        """Forget what :meth:`stage` left: the issue failed, the certificate was not stored."""


@dataclasses.dataclass(frozen=True)
class ResponseSigner:
    """Signs responses: a cryptography private key (HSM keys only need ``sign``) and its certificate."""

    key: PrivateKeyTypes
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()


@dataclasses.dataclass(frozen=True)
class KeyPairType:
    """An entry of signKeyPairTypes: key algorithm OID and optional parameter OID (curve)."""

    algorithm: str
    parameter: str | None = None


EC_P256 = KeyPairType("1.2.840.10045.2.1", "1.2.840.10045.3.1.7")
EC_P384 = KeyPairType("1.2.840.10045.2.1", "1.3.132.0.34")
RSA = KeyPairType("1.2.840.113549.1.1.1")


@dataclasses.dataclass(frozen=True)
class CmpProfileConfig:
    """One CMP alias (``/pkix/<name>``): who may ask what, and how the server answers."""

    name: str
    ca_name: x509.Name  # the recipient requests must name (NULL-DN is tolerated)
    shared_secrets: Mapping[bytes, bytes] = dataclasses.field(default_factory=dict)  # senderKID -> secret
    trust_anchors: tuple[x509.Certificate, ...] = ()  # for signature-protected requests
    implicit_confirm_allowed: bool = True
    confirm_timeout: _dt.timedelta = _dt.timedelta(minutes=5)
    require_protection: bool = True
    protect_responses: bool = True
    allow_ra_verified_pop: bool = False  # accept raVerified from signature-authenticated (RA) requesters
    allow_same_key_kur: bool = False
    approval_required: bool = False
    poll_interval: int = 5  # seconds (pollRep checkAfter)
    message_time_window: _dt.timedelta = _dt.timedelta(minutes=5)
    mac_allowed_for: frozenset[BodyType] = frozenset({BodyType.IR, BodyType.CR, BodyType.P10CR,
                                                      BodyType.CERTCONF, BodyType.POLLREQ, BodyType.GENM,
                                                      BodyType.ERROR})
    revocation_by_owner_only: bool = True  # rr must be signed with the certificate it revokes
    return_ca_pubs: bool = True
    pbm_max_iterations: int = 100_000
    pbm_min_iterations: int = 100
    response_pbm_owf: HashAlgorithm = HashAlgorithm.SHA256
    response_pbm_mac: MacAlgorithm = MacAlgorithm.HMAC_SHA256
    response_pbm_iterations: int = 10_000
    cert_req_template: CertTemplate | None = None  # genm certReqTemplate
    key_pair_types: tuple[KeyPairType, ...] = (EC_P256, EC_P384, RSA)  # genm signKeyPairTypes
