"""ca: the PKI engine (CAs, profiles, issuance, revocation, CRL, OCSP, inventory, usage reports).

A library: no Flask, no SQL. Keys live in the token behind :class:`ca.signer.KeyProvider`
(``hsm.KeyStore``); persistence goes through the Protocols of :mod:`ca.repository`
(:class:`ca.memory.MemoryRepository` implements them in memory). The CMP server logic lives in
:mod:`ca.cmp`.
"""
from __future__ import annotations

from .crl import CrlPublisher
from .engine import (
    CaEngine,
    IssuedCertificate,
    ResponderCredential,
    ServerKeyBundle,
    encode_certificates,
    load_certificates,
    parse_csr,
    random_serial,
)
from .errors import (
    AlreadyRevoked,
    CaError,
    CaExists,
    CaNotFound,
    CaNotUsable,
    ConcurrentUpdate,
    CsrSignatureInvalid,
    DuplicateSerial,
    InvalidCaMaterial,
    InvalidCsr,
    InvalidProfile,
    InvalidRequest,
    KeyMismatch,
    NotCertificateOwner,
    NotOnHold,
    ProfileNotFound,
    ProfileViolation,
    SerialExhausted,
    UnknownSerial,
    Violation,
    ViolationCode,
)
from .memory import MemoryRepository
from .ocsp import OcspAnswer, OcspResponder
from .profiles import (
    AttributeRule,
    ExtendedKeyUsage,
    KeyUsageBit,
    Profile,
    SanRule,
    SanType,
    SubjectAttr,
    builtin_profiles,
)
from .repository import CaRepository, CertificateRepository
from .signer import KeyProvider
from .types import (
    CaRecord,
    CaSettings,
    CertificateQuery,
    CertificateRecord,
    CertStatus,
    CreateIntermediateRequest,
    CreateRootRequest,
    CrlRecord,
    ExportFormat,
    ImportCaRequest,
    IssuanceCount,
    IssueRequest,
    KeyIssueRequest,
    Revocation,
    RevocationReason,
    RevokeRequest,
    ServerKeygenRequest,
    SignatureCount,
    SignatureKind,
    UsageRecord,
    UsageReport,
    UsageUpdate,
)

__all__ = [
    "AlreadyRevoked", "AttributeRule", "CaEngine", "CaError", "CaExists", "CaNotFound", "CaNotUsable", "CaRecord",
    "CaRepository", "CaSettings", "CertStatus", "CertificateQuery", "CertificateRecord", "CertificateRepository",
    "ConcurrentUpdate", "CreateIntermediateRequest", "CreateRootRequest", "CrlPublisher", "CrlRecord",
    "CsrSignatureInvalid", "DuplicateSerial", "ExportFormat", "ExtendedKeyUsage", "ImportCaRequest",
    "InvalidCaMaterial", "InvalidCsr", "InvalidProfile", "InvalidRequest", "IssuanceCount", "IssueRequest",
    "IssuedCertificate", "KeyIssueRequest", "KeyMismatch", "KeyProvider", "KeyUsageBit", "MemoryRepository",
    "NotCertificateOwner", "NotOnHold", "OcspAnswer", "OcspResponder", "Profile", "ProfileNotFound",
    "ProfileViolation", "ResponderCredential", "Revocation", "RevocationReason", "RevokeRequest", "SanRule",
    "SanType", "SerialExhausted", "ServerKeyBundle", "ServerKeygenRequest", "SignatureCount", "SignatureKind",
    "SubjectAttr", "UnknownSerial", "UsageRecord", "UsageReport", "UsageUpdate", "Violation", "ViolationCode",
    "builtin_profiles", "encode_certificates", "load_certificates", "parse_csr", "random_serial",
]
