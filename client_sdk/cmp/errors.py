"""CMP errors: one root, one leaf per PKIFailureInfo condition.

Every leaf carries its :class:`~client_sdk.cmp.enums.FailureInfo` bit in ``failure``, so a server
turns any :class:`CmpError` into an ``error`` message with the right PKIStatusInfo
(:func:`client_sdk.cmp.builders.error_message_for`), and a client turns a received rejection back
into the same leaf (:func:`error_from_status`), in one place, like certbot's ``acme.messages.Error``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Final

from .enums import FailureInfo, PKIStatus

if TYPE_CHECKING:
    from .messages import PKIStatusInfo


class CmpError(Exception):
    """Root of all CMP errors.

    ``detail`` is a human-readable reason (used as PKIStatusInfo.statusString by servers; never
    include secrets). ``status_info`` is set when the error was received from a peer.
    """

    failure: ClassVar[FailureInfo | None] = None

    def __init__(self, detail: str = "", *, status_info: PKIStatusInfo | None = None) -> None:
        super().__init__(detail or self.__class__.__name__)
        self.detail = detail or self.__class__.__name__
        self.status_info = status_info


class BadAlg(CmpError):
    failure = FailureInfo.BAD_ALG


class BadMessageCheck(CmpError):
    failure = FailureInfo.BAD_MESSAGE_CHECK


class BadRequest(CmpError):
    failure = FailureInfo.BAD_REQUEST


class BadTime(CmpError):
    failure = FailureInfo.BAD_TIME


class BadCertId(CmpError):
    failure = FailureInfo.BAD_CERT_ID


class BadDataFormat(CmpError):
    failure = FailureInfo.BAD_DATA_FORMAT


class WrongAuthority(CmpError):
    failure = FailureInfo.WRONG_AUTHORITY


class IncorrectData(CmpError):
    failure = FailureInfo.INCORRECT_DATA


class MissingTimeStamp(CmpError):
    failure = FailureInfo.MISSING_TIME_STAMP


class BadPOP(CmpError):
    failure = FailureInfo.BAD_POP


class CertRevoked(CmpError):
    failure = FailureInfo.CERT_REVOKED


class CertConfirmed(CmpError):
    failure = FailureInfo.CERT_CONFIRMED


class WrongIntegrity(CmpError):
    failure = FailureInfo.WRONG_INTEGRITY


class BadRecipientNonce(CmpError):
    failure = FailureInfo.BAD_RECIPIENT_NONCE


class TimeNotAvailable(CmpError):
    failure = FailureInfo.TIME_NOT_AVAILABLE


class UnacceptedPolicy(CmpError):
    failure = FailureInfo.UNACCEPTED_POLICY


class UnacceptedExtension(CmpError):
    failure = FailureInfo.UNACCEPTED_EXTENSION


class AddInfoNotAvailable(CmpError):
    failure = FailureInfo.ADD_INFO_NOT_AVAILABLE


class BadSenderNonce(CmpError):
    failure = FailureInfo.BAD_SENDER_NONCE


class BadCertTemplate(CmpError):
    failure = FailureInfo.BAD_CERT_TEMPLATE


class SignerNotTrusted(CmpError):
    failure = FailureInfo.SIGNER_NOT_TRUSTED


class TransactionIdInUse(CmpError):
    failure = FailureInfo.TRANSACTION_ID_IN_USE


class UnsupportedVersion(CmpError):
    failure = FailureInfo.UNSUPPORTED_VERSION


class NotAuthorized(CmpError):
    failure = FailureInfo.NOT_AUTHORIZED


class SystemUnavail(CmpError):
    failure = FailureInfo.SYSTEM_UNAVAIL


class SystemFailure(CmpError):
    failure = FailureInfo.SYSTEM_FAILURE


class DuplicateCertReq(CmpError):
    failure = FailureInfo.DUPLICATE_CERT_REQ


class Rejected(CmpError):
    """A peer rejected the request without naming a failure bit we know."""


class TransportError(CmpError):
    """The CMP server could not be reached or answered outside RFC 6712 (HTTP status, content type)."""

    failure = FailureInfo.SYSTEM_UNAVAIL


BY_FAILURE: Final[dict[FailureInfo, type[CmpError]]] = {
    cls.failure: cls
    for cls in CmpError.__subclasses__()
    if cls.failure is not None and cls is not TransportError
}
assert len(BY_FAILURE) == len(FailureInfo), "one leaf per PKIFailureInfo bit"


def error_from_status(status_info: PKIStatusInfo, *, context: str = "") -> CmpError:
    """The typed exception for a received rejection (lowest failInfo bit wins)."""
    text = "; ".join(status_info.status_strings)
    detail = ": ".join(p for p in (context, text or status_info.status.name.lower()) if p)
    for bit in sorted(status_info.fail_info):
        return BY_FAILURE[bit](detail, status_info=status_info)
    if status_info.status is PKIStatus.REJECTION:
        return Rejected(detail, status_info=status_info)
    return Rejected(detail, status_info=status_info)
