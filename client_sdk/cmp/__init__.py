"""CMPv2 (RFC 4210/9480, Lightweight CMP RFC 9483) for csm: shared by the CA's CMP server and clients.

- :mod:`.messages`: typed PKIMessage codec (``PKIMessage.decode`` / ``encode``), body registry.
- :mod:`.protection`: PasswordBasedMac and signature protection, computing and verifying.
- :mod:`.pop`: CRMF signature proof of possession.
- :mod:`.builders`: request/response bodies and header helpers.
- :mod:`.trust`: path validation of protection certificates.
- :mod:`.client`: RFC 6712 HTTP transport and :class:`CmpClient`.
- :mod:`.errors`: :class:`CmpError` and one leaf per PKIFailureInfo bit.
"""
from __future__ import annotations

from . import builders, errors
from .algorithms import PBMParameters, PssParameters, SignatureAlgorithmId, UnknownAlgorithm
from .client import CmpClient, Enrollment, HttpTransport, Transport
from .enums import (
    BodyType,
    FailureInfo,
    HashAlgorithm,
    InfoType,
    MacAlgorithm,
    PKIStatus,
    PopKind,
    Pvno,
    RevocationReason,
    SignatureAlgorithm,
)
from .errors import CmpError
from .messages import (
    BODY_TYPES,
    Body,
    CertConfBody,
    CertId,
    CertRepMessageBody,
    CertReqMessagesBody,
    CertReqMsg,
    CertResponse,
    CertStatus,
    CertTemplate,
    Control,
    CpBody,
    CrBody,
    ErrorBody,
    GenmBody,
    GenpBody,
    InfoTypeAndValue,
    IpBody,
    IrBody,
    KupBody,
    KurBody,
    P10crBody,
    PKIHeader,
    PKIMessage,
    PKIStatusInfo,
    PkiConfBody,
    PollRepBody,
    PollRepEntry,
    PollReqBody,
    ProofOfPossession,
    RevDetails,
    RpBody,
    RrBody,
    decode_header_lenient,
)
from .pop import sign_pop, verify_pop
from .protection import (
    PbmKeyCache,
    ProtectionKind,
    pbm_base_key,
    pbm_mac,
    pbm_parameters,
    protect_with_pbm,
    protect_with_signature,
    protection_certificate,
    protection_kind,
    subject_key_id,
    verify_pbm,
    verify_signature,
)
from .trust import verify_chain

__all__ = [
    "BODY_TYPES", "Body", "BodyType", "CertConfBody", "CertId", "CertRepMessageBody", "CertReqMessagesBody",
    "CertReqMsg", "CertResponse", "CertStatus", "CertTemplate", "CmpClient", "CmpError", "Control", "CpBody",
    "CrBody", "Enrollment", "ErrorBody", "FailureInfo", "GenmBody", "GenpBody", "HashAlgorithm", "HttpTransport",
    "InfoType", "InfoTypeAndValue", "IpBody", "IrBody", "KupBody", "KurBody", "MacAlgorithm", "P10crBody",
    "PBMParameters", "PKIHeader", "PKIMessage", "PKIStatus", "PKIStatusInfo", "PkiConfBody", "PollRepBody",
    "PollRepEntry", "PollReqBody", "PopKind", "ProofOfPossession", "ProtectionKind", "PssParameters", "Pvno",
    "RevDetails", "RevocationReason", "RpBody", "RrBody", "SignatureAlgorithm", "SignatureAlgorithmId",
    "Transport", "UnknownAlgorithm", "builders", "decode_header_lenient", "errors", "pbm_base_key", "pbm_mac",
    "pbm_parameters", "PbmKeyCache",
    "protect_with_pbm", "protect_with_signature", "protection_certificate", "protection_kind", "sign_pop",
    "subject_key_id", "verify_chain", "verify_pbm", "verify_pop", "verify_signature",
]
