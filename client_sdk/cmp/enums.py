"""Closed vocabularies of CMP (RFC 4210/9480): body types, PKIStatus, PKIFailureInfo bits, algorithms.

Every decoder in this package maps wire values onto these Enums and refuses values outside them
(with a :class:`~client_sdk.cmp.errors.CmpError` leaf), so callers never see a raw integer or OID
where a closed vocabulary applies.
"""
from __future__ import annotations

import enum
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes


class BodyType(enum.Enum):
    """PKIBody CHOICE alternatives (RFC 4210 §5.1.2, RFC 9480); the value is the context tag number."""

    IR = 0
    IP = 1
    CR = 2
    CP = 3
    P10CR = 4
    POPDECC = 5
    POPDECR = 6
    KUR = 7
    KUP = 8
    KRR = 9
    KRP = 10
    RR = 11
    RP = 12
    CCR = 13
    CCP = 14
    CKUANN = 15
    CANN = 16
    RANN = 17
    CRLANN = 18
    PKICONF = 19
    NESTED = 20
    GENM = 21
    GENP = 22
    ERROR = 23
    CERTCONF = 24
    POLLREQ = 25
    POLLREP = 26

    @property
    def asn1_name(self) -> str:
        """The component name used by pyasn1-alt-modules ``rfc9480.PKIBody``."""
        return _ASN1_NAMES[self]

    @classmethod
    def from_asn1_name(cls, name: str) -> BodyType:
        return _BY_ASN1_NAME[name]


_ASN1_NAMES: Final[dict[BodyType, str]] = {
    b: ("certConf" if b is BodyType.CERTCONF else "pollReq" if b is BodyType.POLLREQ
        else "pollRep" if b is BodyType.POLLREP else b.name.lower())
    for b in BodyType
}
_BY_ASN1_NAME: Final[dict[str, BodyType]] = {v: k for k, v in _ASN1_NAMES.items()}


class PKIStatus(enum.IntEnum):
    """RFC 4210 §5.2.3 PKIStatus."""

    ACCEPTED = 0
    GRANTED_WITH_MODS = 1
    REJECTION = 2
    WAITING = 3
    REVOCATION_WARNING = 4
    REVOCATION_NOTIFICATION = 5
    KEY_UPDATE_WARNING = 6


class FailureInfo(enum.IntEnum):
    """RFC 4210 §5.2.3 PKIFailureInfo; the value is the bit number."""

    BAD_ALG = 0
    BAD_MESSAGE_CHECK = 1
    BAD_REQUEST = 2
    BAD_TIME = 3
    BAD_CERT_ID = 4
    BAD_DATA_FORMAT = 5
    WRONG_AUTHORITY = 6
    INCORRECT_DATA = 7
    MISSING_TIME_STAMP = 8
    BAD_POP = 9
    CERT_REVOKED = 10
    CERT_CONFIRMED = 11
    WRONG_INTEGRITY = 12
    BAD_RECIPIENT_NONCE = 13
    TIME_NOT_AVAILABLE = 14
    UNACCEPTED_POLICY = 15
    UNACCEPTED_EXTENSION = 16
    ADD_INFO_NOT_AVAILABLE = 17
    BAD_SENDER_NONCE = 18
    BAD_CERT_TEMPLATE = 19
    SIGNER_NOT_TRUSTED = 20
    TRANSACTION_ID_IN_USE = 21
    UNSUPPORTED_VERSION = 22
    NOT_AUTHORIZED = 23
    SYSTEM_UNAVAIL = 24
    SYSTEM_FAILURE = 25
    DUPLICATE_CERT_REQ = 26


class Pvno(enum.IntEnum):
    """PKIHeader pvno. ``CMP2021`` (3) is required by RFC 9480 only for EnvelopedData/hashAlg uses."""

    CMP1999 = 1
    CMP2000 = 2
    CMP2021 = 3


class HashAlgorithm(enum.Enum):
    """One-way functions accepted for PBM ``owf``, certConf ``hashAlg`` and signatures."""

    SHA1 = "1.3.14.3.2.26"
    SHA224 = "2.16.840.1.101.3.4.2.4"
    SHA256 = "2.16.840.1.101.3.4.2.1"
    SHA384 = "2.16.840.1.101.3.4.2.2"
    SHA512 = "2.16.840.1.101.3.4.2.3"

    @property
    def oid(self) -> x509.ObjectIdentifier:
        return x509.ObjectIdentifier(self.value)

    def hash(self) -> hashes.HashAlgorithm:
        return _HASH_CLS[self]()

    @classmethod
    def from_hash(cls, h: hashes.HashAlgorithm) -> HashAlgorithm:
        for k, v in _HASH_CLS.items():
            if isinstance(h, v):
                return k
        raise ValueError(f"unsupported hash algorithm {h.name}")


_HASH_CLS: Final[dict[HashAlgorithm, type[hashes.HashAlgorithm]]] = {
    HashAlgorithm.SHA1: hashes.SHA1,
    HashAlgorithm.SHA224: hashes.SHA224,
    HashAlgorithm.SHA256: hashes.SHA256,
    HashAlgorithm.SHA384: hashes.SHA384,
    HashAlgorithm.SHA512: hashes.SHA512,
}


class MacAlgorithm(enum.Enum):
    """PBM ``mac`` algorithms (RFC 4210 §5.1.3.1, RFC 9481 §6.2)."""

    HMAC_SHA1 = "1.3.6.1.5.5.8.1.2"
    HMAC_SHA224 = "1.2.840.113549.2.8"
    HMAC_SHA256 = "1.2.840.113549.2.9"
    HMAC_SHA384 = "1.2.840.113549.2.10"
    HMAC_SHA512 = "1.2.840.113549.2.11"

    @property
    def oid(self) -> x509.ObjectIdentifier:
        return x509.ObjectIdentifier(self.value)

    @property
    def hash_algorithm(self) -> HashAlgorithm:
        return HashAlgorithm[self.name.removeprefix("HMAC_")]

    @classmethod
    def from_oid(cls, dotted: str) -> MacAlgorithm:
        if dotted == "1.2.840.113549.2.7":  # hmacWithSHA1 (PKCS#5), an alias some peers send
            return cls.HMAC_SHA1
        return cls(dotted)


class SignatureAlgorithm(enum.Enum):
    """Signature algorithms for message protection and POP (RFC 9481 §3)."""

    RSA_SHA256 = "1.2.840.113549.1.1.11"
    RSA_SHA384 = "1.2.840.113549.1.1.12"
    RSA_SHA512 = "1.2.840.113549.1.1.13"
    RSA_PSS = "1.2.840.113549.1.1.10"
    ECDSA_SHA256 = "1.2.840.10045.4.3.2"
    ECDSA_SHA384 = "1.2.840.10045.4.3.3"
    ECDSA_SHA512 = "1.2.840.10045.4.3.4"
    ED25519 = "1.3.101.112"
    ED448 = "1.3.101.113"

    @property
    def oid(self) -> x509.ObjectIdentifier:
        return x509.ObjectIdentifier(self.value)


PASSWORD_BASED_MAC_OID: Final = "1.2.840.113533.7.66.13"


class RevocationReason(enum.IntEnum):
    """CRLReason codes (RFC 5280 §5.3.1) carried in rr crlEntryDetails."""

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    REMOVE_FROM_CRL = 8
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10

    def to_x509(self) -> x509.ReasonFlags:
        return _REASON_FLAGS[self]

    @classmethod
    def from_x509(cls, flag: x509.ReasonFlags) -> RevocationReason:
        return {v: k for k, v in _REASON_FLAGS.items()}[flag]


_REASON_FLAGS: Final[dict[RevocationReason, x509.ReasonFlags]] = {
    RevocationReason.UNSPECIFIED: x509.ReasonFlags.unspecified,
    RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    RevocationReason.CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    RevocationReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
    RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    RevocationReason.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    RevocationReason.REMOVE_FROM_CRL: x509.ReasonFlags.remove_from_crl,
    RevocationReason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
    RevocationReason.AA_COMPROMISE: x509.ReasonFlags.aa_compromise,
}


class InfoType(enum.Enum):
    """Well-known InfoTypeAndValue types (id-it, RFC 4210 §5.3.19 and RFC 9480 §2.3-2.6)."""

    CA_PROT_ENC_CERT = "1.3.6.1.5.5.7.4.1"
    SIGN_KEY_PAIR_TYPES = "1.3.6.1.5.5.7.4.2"
    ENC_KEY_PAIR_TYPES = "1.3.6.1.5.5.7.4.3"
    PREFERRED_SYMM_ALG = "1.3.6.1.5.5.7.4.4"
    CA_KEY_UPDATE_INFO = "1.3.6.1.5.5.7.4.5"
    CURRENT_CRL = "1.3.6.1.5.5.7.4.6"
    UNSUPPORTED_OIDS = "1.3.6.1.5.5.7.4.7"
    KEY_PAIR_PARAM_REQ = "1.3.6.1.5.5.7.4.10"
    KEY_PAIR_PARAM_REP = "1.3.6.1.5.5.7.4.11"
    REV_PASSPHRASE = "1.3.6.1.5.5.7.4.12"
    IMPLICIT_CONFIRM = "1.3.6.1.5.5.7.4.13"
    CONFIRM_WAIT_TIME = "1.3.6.1.5.5.7.4.14"
    ORIG_PKI_MESSAGE = "1.3.6.1.5.5.7.4.15"
    SUPP_LANG_TAGS = "1.3.6.1.5.5.7.4.16"
    CA_CERTS = "1.3.6.1.5.5.7.4.17"
    ROOT_CA_KEY_UPDATE = "1.3.6.1.5.5.7.4.18"
    CERT_REQ_TEMPLATE = "1.3.6.1.5.5.7.4.19"
    ROOT_CA_CERT = "1.3.6.1.5.5.7.4.20"
    CERT_PROFILE = "1.3.6.1.5.5.7.4.21"
    CRL_STATUS_LIST = "1.3.6.1.5.5.7.4.22"
    CRLS = "1.3.6.1.5.5.7.4.23"

    @property
    def oid(self) -> x509.ObjectIdentifier:
        return x509.ObjectIdentifier(self.value)


class PopKind(enum.Enum):
    """ProofOfPossession CHOICE alternatives (RFC 4211 §4)."""

    RA_VERIFIED = "raVerified"
    SIGNATURE = "signature"
    KEY_ENCIPHERMENT = "keyEncipherment"
    KEY_AGREEMENT = "keyAgreement"
