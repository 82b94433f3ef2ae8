"""Values of the CA engine: closed vocabularies as Enums, records and requests as frozen dataclasses.

Records (``CaRecord``, ``CertificateRecord``, ``CrlRecord``, ``UsageRecord``...) are what the
repositories store; requests (``CreateRootRequest``, ``IssueRequest``...) are one struct per
engine operation. Times are timezone-aware UTC, truncated to whole seconds (what X.509 encodes).
Serial numbers are Python ints of up to 159 bits: a SQL implementation stores them as a decimal
string or NUMERIC(49), not BIGINT.
"""
from __future__ import annotations

import datetime as dt
import enum
import hashlib
from dataclasses import dataclass, field
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from client_sdk.cmp import RevocationReason
from hsm.types import HashAlg, KeyType

UTC = dt.timezone.utc


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC, truncated to whole seconds."""
    return dt.datetime.now(UTC).replace(microsecond=0)


def key_type_of(public_key: object) -> KeyType | None:
    """The csm key type of a public key, or None for anything csm does not sign for
    (other RSA sizes, other curves, Ed25519, DSA...)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return {2048: KeyType.RSA_2048, 3072: KeyType.RSA_3072, 4096: KeyType.RSA_4096}.get(public_key.key_size)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp256r1": KeyType.EC_P256, "secp384r1": KeyType.EC_P384}.get(public_key.curve.name)
    return None


def describe_key(public_key: object) -> str:
    """Human description of any public key (for violations and records)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa-{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"ec-{public_key.curve.name}"
    return type(public_key).__name__


class CertStatus(enum.Enum):
    """Status of an issued certificate at a given instant (revoked wins over expired)."""

    ACTIVE = "active"
    REVOKED = "revoked"  # includes certificateHold
    EXPIRED = "expired"


class SignatureKind(enum.Enum):
    """What a CA key signed (usage reports count signatures per key and kind)."""

    CERTIFICATE = "certificate"
    CRL = "crl"
    OCSP = "ocsp"
    OTHER = "other"  # e.g. CMP protection through :meth:`CaEngine.signing_key`


class ExportFormat(enum.Enum):
    PEM = "pem"
    DER = "der"  # a single certificate only
    PKCS7_DER = "p7b"  # certs-only SignedData (RFC 2315 degenerate), DER
    PKCS7_PEM = "p7b-pem"


@dataclass(frozen=True)
class CaSettings:
    """Per-CA timing of revocation information.

    ``crl_validity``: nextUpdate - thisUpdate of each CRL. ``crl_renew_before``: a CRL is
    regenerated once ``now >= nextUpdate - crl_renew_before`` (and after every revocation
    change). ``ocsp_validity``: nextUpdate - thisUpdate of OCSP responses."""

    crl_validity: dt.timedelta = dt.timedelta(days=7)
    crl_renew_before: dt.timedelta = dt.timedelta(days=2)
    ocsp_validity: dt.timedelta = dt.timedelta(hours=4)

    def __post_init__(self) -> None:
        if self.crl_validity <= dt.timedelta(0) or self.ocsp_validity <= dt.timedelta(0):
            raise ValueError("CRL and OCSP validity must be positive")
        if not dt.timedelta(0) <= self.crl_renew_before < self.crl_validity:
            raise ValueError("crl_renew_before must be >= 0 and shorter than crl_validity")


@dataclass(frozen=True)
class CaRecord:
    """One CA as stored: its certificate, the token label of its key, and the issuers above it.

    ``chain_der``: the certificates above this CA, nearest issuer first, self-signed root last
    (empty for a root). ``parent``: the csm CA that issued it, if any."""

    name: str
    key_label: str
    certificate_der: bytes
    created_at: dt.datetime
    chain_der: tuple[bytes, ...] = ()
    parent: str | None = None
    imported: bool = False
    settings: CaSettings = field(default_factory=CaSettings)

    @cached_property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.certificate_der)

    @cached_property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """This CA's certificate first, then its issuers up to the root."""
        return (self.certificate, *(x509.load_der_x509_certificate(d) for d in self.chain_der))

    @property
    def key_type(self) -> KeyType:
        kt = key_type_of(self.certificate.public_key())
        assert kt is not None
        return kt

    @property
    def is_root(self) -> bool:
        return not self.chain_der


@dataclass(frozen=True)
class Revocation:
    """A certificate's revocation: RFC 5280 reason, time, optional invalidity date, who did it."""

    reason: RevocationReason
    revoked_at: dt.datetime
    revoked_by: str = ""
    invalidity_date: dt.datetime | None = None


@dataclass(frozen=True)
class CertificateRecord:
    """One issued certificate as stored (the DER is authoritative; the other fields are
    denormalised for search). ``sans`` are ``"DNS:name"``, ``"IP:addr"``, ``"URI:uri"``,
    ``"email:addr"``."""

    serial: int
    ca_name: str
    profile: str
    requester: str
    subject: str
    sans: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    issued_at: dt.datetime
    key_type: str
    der: bytes
    renewal_of: int | None = None
    server_generated_key: bool = False
    is_ca: bool = False
    revocation: Revocation | None = None

    @cached_property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)

    @property
    def fingerprint_sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    def status(self, at: dt.datetime) -> CertStatus:
        if self.revocation is not None:
            return CertStatus.REVOKED
        if self.not_after < at:
            return CertStatus.EXPIRED
        return CertStatus.ACTIVE


@dataclass(frozen=True)
class CrlRecord:
    """A signed CRL. ``revocation_epoch`` is the CA's revocation epoch it reflects (see
    :meth:`CertificateRepository.revocation_epoch`)."""

    ca_name: str
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    der: bytes
    revocation_epoch: int

    @property
    def pem(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return x509.load_der_x509_crl(self.der).public_bytes(Encoding.PEM)


@dataclass(frozen=True)
class UsageRecord:
    """A client's statement about one of its certificates ("in use on host X")."""

    serial: int
    ca_name: str
    reported_by: str
    host: str
    reported_at: dt.datetime
    in_use: bool = True
    detail: str = ""


@dataclass(frozen=True)
class SignatureCount:
    ca_name: str
    key_label: str
    kind: SignatureKind
    count: int


@dataclass(frozen=True)
class IssuanceCount:
    """Counters for one (CA, profile, requester). ``expiring``: active certificates whose
    notAfter falls within the report's window."""

    ca_name: str
    profile: str
    requester: str
    issued: int = 0
    renewed: int = 0
    revoked: int = 0
    expiring: int = 0


@dataclass(frozen=True)
class UsageReport:
    generated_at: dt.datetime
    expiring_within: dt.timedelta
    issuance: tuple[IssuanceCount, ...]
    signatures: tuple[SignatureCount, ...]
    usage: tuple[UsageRecord, ...]


@dataclass(frozen=True)
class CertificateQuery:
    """Inventory filters; every given filter must match (AND). Text filters are
    case-insensitive substrings; ``san_contains`` matches the ``"DNS:..."`` forms as well as the
    bare value. ``expires_after``/``expires_before`` bound notAfter (inclusive/exclusive).
    ``status`` is evaluated at ``as_of`` (the engine fills in now). Results are ordered by
    issue time, newest first, then serial."""

    ca_name: str | None = None
    serial: int | None = None
    subject_contains: str | None = None
    san_contains: str | None = None
    profile: str | None = None
    requester: str | None = None
    status: CertStatus | None = None
    expires_after: dt.datetime | None = None
    expires_before: dt.datetime | None = None
    as_of: dt.datetime | None = None
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= 10_000 or self.offset < 0:
            raise ValueError("limit must be 1..10000 and offset >= 0")


# -- requests (one struct per engine operation) ---------------------------------------------------

@dataclass(frozen=True)
class CreateRootRequest:
    """A self-signed root whose key is generated in the token. ``subject`` is an x509.Name or an
    RFC 4514 string. ``key_label`` defaults to ``ca-<name>-<random>``."""

    name: str
    subject: x509.Name | str
    key_type: KeyType = KeyType.EC_P256
    validity: dt.timedelta = dt.timedelta(days=3650)
    path_length: int | None = None
    key_label: str | None = None
    settings: CaSettings = field(default_factory=CaSettings)
    requester: str = ""


@dataclass(frozen=True)
class CreateIntermediateRequest:
    """A subordinate CA signed by the existing CA ``parent``; its key is generated in the token.
    The URLs go into the new CA certificate (the parent's CRL / OCSP / certificate)."""

    name: str
    parent: str
    subject: x509.Name | str
    key_type: KeyType = KeyType.EC_P256
    validity: dt.timedelta = dt.timedelta(days=1825)
    path_length: int | None = 0
    key_label: str | None = None
    crl_url: str | None = None
    ocsp_url: str | None = None
    ca_issuers_url: str | None = None
    settings: CaSettings = field(default_factory=CaSettings)
    requester: str = ""


@dataclass(frozen=True)
class ImportCaRequest:
    """An admin-made CA: certificate (PEM/DER) and private key (PEM/DER, PKCS#8 or traditional,
    optionally encrypted with ``password``). ``chain``: the issuers above it (PEM bundle or DER
    certificates), unless ``parent`` names the csm CA that issued it."""

    name: str
    certificate: bytes
    private_key: bytes = field(repr=False)
    password: bytes | None = field(default=None, repr=False)
    chain: tuple[bytes, ...] = ()
    parent: str | None = None
    key_label: str | None = None
    settings: CaSettings = field(default_factory=CaSettings)
    requester: str = ""


@dataclass(frozen=True)
class IssueRequest:
    """Sign a PKCS#10 CSR (PEM or DER bytes, or a parsed object) under ``profile`` of CA ``ca``.

    ``validity`` (or an absolute ``not_after``) asks for a lifetime; default: the profile's.
    ``renewal_of``: serial of the certificate this one renews (counted as a renewal)."""

    ca: str
    profile: str
    csr: bytes | x509.CertificateSigningRequest
    requester: str
    validity: dt.timedelta | None = None
    not_after: dt.datetime | None = None
    renewal_of: int | None = None


@dataclass(frozen=True)
class KeyIssueRequest:
    """Issue for a public key whose possession was proven elsewhere (CMP ir/cr/kur with a
    verified POP). The same profile checks apply; ``sans`` and ``extensions`` are *requests*."""

    ca: str
    profile: str
    subject: x509.Name
    public_key: PublicKeyTypes
    requester: str
    sans: tuple[x509.GeneralName, ...] = ()
    extensions: tuple[x509.Extension[x509.ExtensionType], ...] = ()
    validity: dt.timedelta | None = None
    not_after: dt.datetime | None = None
    renewal_of: int | None = None


@dataclass(frozen=True)
class ServerKeygenRequest:
    """Server-side key generation (the less safe path, for callers that cannot make keys):
    the key is generated in software, returned in PKCS#12 encrypted with ``password`` and never
    retained. ``password`` must be at least 8 characters."""

    ca: str
    profile: str
    subject: x509.Name | str
    requester: str
    password: str = field(repr=False)
    key_type: KeyType = KeyType.EC_P256
    sans: tuple[x509.GeneralName, ...] = ()
    validity: dt.timedelta | None = None
    friendly_name: str | None = None


@dataclass(frozen=True)
class RevokeRequest:
    """Revoke the certificate ``serial`` (optionally asserting it belongs to CA ``ca``)."""

    serial: int
    reason: RevocationReason = RevocationReason.UNSPECIFIED
    requester: str = ""
    ca: str | None = None
    invalidity_date: dt.datetime | None = None


@dataclass(frozen=True)
class UsageUpdate:
    """A client says where one of its certificates is used."""

    serial: int
    reported_by: str
    host: str
    in_use: bool = True
    detail: str = ""


__all__ = [
    "CaRecord", "CaSettings", "CertStatus", "CertificateQuery", "CertificateRecord", "CreateIntermediateRequest",
    "CreateRootRequest", "CrlRecord", "ExportFormat", "HashAlg", "ImportCaRequest", "IssuanceCount", "IssueRequest",
    "KeyIssueRequest", "KeyType", "Revocation", "RevocationReason", "RevokeRequest", "ServerKeygenRequest",
    "SignatureCount", "SignatureKind", "UsageRecord", "UsageReport", "UsageUpdate", "describe_key", "key_type_of",
    "utcnow",
]
