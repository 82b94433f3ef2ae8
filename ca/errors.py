"""The CA engine's error hierarchy: one root (:class:`CaError`), flat leaves named after the
condition, each carrying its data as attributes (never key material, never a PIN).

The service maps these to problem documents in one table (and the CMP front end to
``PKIFailureInfo``); nothing here logs or formats HTTP.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class CaError(Exception):
    """Root of every error raised by :mod:`ca`."""


class CaNotFound(CaError):
    """No CA with this name exists."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no CA named {name!r}")
        self.name = name


class CaExists(CaError):
    """A CA with this name exists already."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a CA named {name!r} exists already")
        self.name = name


class CaNotUsable(CaError):
    """The CA cannot sign now: its certificate is expired or not yet valid, or (for a new
    subordinate) its path length does not allow another CA below it."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"CA {name!r} cannot be used: {reason}")
        self.name = name
        self.reason = reason


class InvalidCaMaterial(CaError):
    """An imported CA certificate or key is unusable (not a CA certificate, unparsable, expired,
    wrong chain) or the private key does not match the certificate."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyMismatch(InvalidCaMaterial):
    """The private key does not belong to the certificate."""


class ProfileNotFound(CaError):
    """No profile with this name is bound to the CA."""

    def __init__(self, ca_name: str, name: str) -> None:
        super().__init__(f"no profile {name!r} for CA {ca_name!r}")
        self.ca_name = ca_name
        self.name = name


class InvalidProfile(CaError, ValueError):
    """A profile definition is inconsistent or its serialised form is malformed."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid profile: " + "; ".join(self.problems))


class InvalidRequest(CaError, ValueError):
    """A request struct carries a value the engine refuses regardless of profile (e.g. the
    removeFromCRL reason for a revocation, a too-short PKCS#12 password)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class InvalidCsr(CaError):
    """The PKCS#10 request cannot be parsed (bad PEM/DER, duplicate extensions, unsupported key)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid CSR: {reason}")
        self.reason = reason


class CsrSignatureInvalid(InvalidCsr):
    """The CSR parsed but its self-signature does not verify (proof of possession failed)."""

    def __init__(self) -> None:
        super().__init__("the CSR signature does not verify")


class ViolationCode(enum.Enum):
    """What part of a profile a request broke (closed vocabulary for problem documents)."""

    KEY_TYPE_NOT_ALLOWED = "key-type-not-allowed"
    VALIDITY_INVALID = "validity-invalid"
    VALIDITY_TOO_LONG = "validity-too-long"
    VALIDITY_BEYOND_CA = "validity-beyond-ca"
    SUBJECT_ATTRIBUTE_NOT_ALLOWED = "subject-attribute-not-allowed"
    SUBJECT_ATTRIBUTE_MISSING = "subject-attribute-missing"
    SUBJECT_ATTRIBUTE_MISMATCH = "subject-attribute-mismatch"
    SUBJECT_ATTRIBUTE_REPEATED = "subject-attribute-repeated"
    SUBJECT_ATTRIBUTE_SYNTAX = "subject-attribute-syntax"
    SAN_TYPE_NOT_ALLOWED = "san-type-not-allowed"
    SAN_MISMATCH = "san-mismatch"
    SAN_SYNTAX = "san-syntax"
    SAN_MISSING = "san-missing"
    TOO_MANY_SANS = "too-many-sans"
    EXTENSION_NOT_ALLOWED = "extension-not-allowed"
    KEY_USAGE_NOT_ALLOWED = "key-usage-not-allowed"
    SERVER_KEYGEN_NOT_ALLOWED = "server-keygen-not-allowed"


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``field`` names the offending item (``subject.CN``, ``san.dns[1]``,
    ``validity``, ``key``), ``detail`` says why in words fit for an operator."""

    code: ViolationCode
    field: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "field": self.field, "detail": self.detail}


class ProfileViolation(CaError):
    """The request breaks its profile; nothing was signed or recorded. ``violations`` lists every
    broken rule found (not just the first)."""

    def __init__(self, profile: str, violations: Iterable[Violation]) -> None:
        self.profile = profile
        self.violations = tuple(violations)
        super().__init__(f"request violates profile {profile!r}: "
                         + "; ".join(f"{v.field}: {v.detail}" for v in self.violations))


class UnknownSerial(CaError):
    """No certificate with this serial number was issued by csm (or by the named CA)."""

    def __init__(self, serial: int) -> None:
        super().__init__(f"no certificate with serial {serial:#x}")
        self.serial = serial


class DuplicateSerial(CaError):
    """Raised by a repository when a serial number is already taken (the engine retries)."""

    def __init__(self, serial: int) -> None:
        super().__init__(f"serial {serial:#x} is already taken")
        self.serial = serial


class SerialExhausted(CaError):
    """Several fresh random serials in a row collided: the repository or the RNG is broken."""

    def __init__(self, attempts: int) -> None:
        super().__init__(f"no free serial number after {attempts} attempts")
        self.attempts = attempts


class AlreadyRevoked(CaError):
    """The certificate is revoked already (a hold can be made permanent, nothing else)."""

    def __init__(self, serial: int, reason: str) -> None:
        super().__init__(f"certificate {serial:#x} is already revoked ({reason})")
        self.serial = serial
        self.reason = reason


class NotOnHold(CaError):
    """Only a certificate revoked with certificateHold can be released."""

    def __init__(self, serial: int) -> None:
        super().__init__(f"certificate {serial:#x} is not on hold")
        self.serial = serial


class ConcurrentUpdate(CaError):
    """Raised by a repository when a compare-and-set on a certificate's revocation state lost a
    race (the engine re-reads and decides again)."""

    def __init__(self, serial: int) -> None:
        super().__init__(f"certificate {serial:#x} was changed concurrently")
        self.serial = serial


class NotCertificateOwner(CaError):
    """A usage update for a certificate that the reporter did not request."""

    def __init__(self, serial: int, reporter: str) -> None:
        super().__init__(f"{reporter!r} does not own certificate {serial:#x}")
        self.serial = serial
        self.reporter = reporter


__all__ = [
    "AlreadyRevoked", "CaError", "CaExists", "CaNotFound", "CaNotUsable", "ConcurrentUpdate",
    "CsrSignatureInvalid", "DuplicateSerial", "InvalidCaMaterial", "InvalidCsr", "InvalidProfile",
    "InvalidRequest", "KeyMismatch", "NotCertificateOwner", "NotOnHold", "ProfileNotFound",
    "ProfileViolation", "SerialExhausted", "UnknownSerial", "Violation", "ViolationCode",
]
