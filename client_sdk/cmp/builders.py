"""Builders for CMP requests (client side) and responses (server side), and header helpers.

Headers: :func:`request_header` starts a transaction (fresh transactionID and senderNonce);
:func:`response_header` answers one (sender/recipient swapped, transactionID copied,
recipNonce := the request's senderNonce, fresh senderNonce, messageTime now);
:func:`followup_header` continues one from the client side (certConf, pollReq).
Bodies are returned unprotected; protect them with :mod:`client_sdk.cmp.protection`.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from .algorithms import hash_for_cert
from .enums import BodyType, FailureInfo, HashAlgorithm, InfoType, PKIStatus, RevocationReason
from .errors import CmpError
from .messages import (
    CertConfBody,
    CertId,
    CertRepMessageBody,
    CertReqMsg,
    CertResponse,
    CertStatus,
    CertTemplate,
    Control,
    CpBody,
    ErrorBody,
    GenmBody,
    GenpBody,
    InfoTypeAndValue,
    IpBody,
    KupBody,
    PKIHeader,
    PKIMessage,
    PKIStatusInfo,
    PkiConfBody,
    PollRepBody,
    PollRepEntry,
    PollReqBody,
    RevDetails,
    RpBody,
    RrBody,
)
from .pop import sign_pop

NONCE_SIZE = 16

Party = x509.Name | x509.GeneralName


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def _gn(party: Party) -> x509.GeneralName:
    if isinstance(party, x509.Name):
        return x509.DirectoryName(party)
    if isinstance(party, x509.GeneralName):
        return party
    raise TypeError("sender/recipient must be an x509.Name or x509.GeneralName")


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


NULL_DN = x509.Name([])


def request_header(*, sender: Party = NULL_DN, recipient: Party = NULL_DN, transaction_id: bytes | None = None,
                   sender_kid: bytes | None = None, implicit_confirm: bool = False, pvno: int = 2,
                   general_info: Iterable[InfoTypeAndValue] = (), now: _dt.datetime | None = None) -> PKIHeader:
    """Header of the first request of a transaction."""
    info = tuple(general_info)
    if implicit_confirm:
        info = (InfoTypeAndValue.implicit_confirm(), *info)
    return PKIHeader(sender=_gn(sender), recipient=_gn(recipient), pvno=pvno, message_time=now or _now(),
                     sender_kid=sender_kid, transaction_id=transaction_id or new_nonce(),
                     sender_nonce=new_nonce(), general_info=info)


def followup_header(previous_request: PKIHeader, response: PKIHeader, *,
                    now: _dt.datetime | None = None) -> PKIHeader:
    """Header of the client's next message in a transaction (certConf, pollReq)."""
    return dataclasses.replace(previous_request, message_time=now or _now(), sender_nonce=new_nonce(),
                               recip_nonce=response.sender_nonce, protection_alg=None, general_info=())


def response_header(request: PKIHeader, *, sender: Party | None = None, sender_kid: bytes | None = None,
                    implicit_confirm: bool = False, confirm_wait_time: _dt.datetime | None = None,
                    now: _dt.datetime | None = None, sender_nonce: bytes | None = None) -> PKIHeader:
    """Header answering ``request``: sender defaults to the request's recipient; ``sender_nonce``
    defaults to a fresh one (a server that stores its nonce before answering passes it)."""
    info: list[InfoTypeAndValue] = []
    if implicit_confirm:
        info.append(InfoTypeAndValue.implicit_confirm())
    if confirm_wait_time is not None:
        info.append(InfoTypeAndValue.confirm_wait_time(confirm_wait_time))
    return PKIHeader(
        sender=_gn(sender) if sender is not None else request.recipient,
        recipient=request.sender,
        pvno=request.pvno if request.pvno in (2, 3) else 2,
        message_time=now or _now(),
        sender_kid=sender_kid,
        recip_kid=request.sender_kid,
        transaction_id=request.transaction_id,
        sender_nonce=sender_nonce if sender_nonce is not None else new_nonce(),
        recip_nonce=request.sender_nonce,
        general_info=tuple(info),
    )


# ---- client-side bodies ---------------------------------------------------------------------

def cert_request(key: PrivateKeyTypes | PublicKeyTypes, *, subject: x509.Name | None = None,
                 extensions: Iterable[x509.Extension[x509.ExtensionType]] | None = None,
                 not_before: _dt.datetime | None = None, not_after: _dt.datetime | None = None,
                 issuer: x509.Name | None = None, cert_req_id: int = 0, old_cert: x509.Certificate | None = None,
                 hash_alg: HashAlgorithm | None = None, rsa_pss: bool = False) -> CertReqMsg:
    """A CertReqMsg for ``key``. With a private key the POP is a signature by that key; with a
    public key the request carries no POP (an RA adds raVerified). ``old_cert`` adds the oldCertID
    control (kur)."""
    public = key.public_key() if hasattr(key, "sign") else key  # type: ignore[union-attr]
    tpl = CertTemplate(subject=subject, public_key=public, extensions=tuple(extensions or ()),
                       not_before=not_before, not_after=not_after, issuer=issuer)
    controls = (Control.old_cert_id(CertId.for_certificate(old_cert)),) if old_cert is not None else ()
    req = CertReqMsg(cert_req_id=cert_req_id, template=tpl, controls=controls)
    if hasattr(key, "sign"):
        req = sign_pop(req, key, hash_alg=hash_alg, rsa_pss=rsa_pss)  # type: ignore[arg-type]
    return req


def cert_hash(cert: x509.Certificate, hash_alg: HashAlgorithm | None = None) -> bytes:
    """certConf certHash: by default the hash of the certificate's signature algorithm."""
    from cryptography.hazmat.primitives import serialization

    alg = hash_alg or hash_for_cert(cert.signature_hash_algorithm)
    h = hashes.Hash(alg.hash())
    h.update(cert.public_bytes(serialization.Encoding.DER))
    return h.finalize()


def cert_conf_body(cert: x509.Certificate, *, cert_req_id: int = 0, accept: bool = True,
                   reason: str = "", failure: FailureInfo | None = None) -> CertConfBody:
    """certConf for one certificate; ``accept=False`` rejects it (statusInfo rejection)."""
    if accept:
        status = PKIStatusInfo.accepted(*([reason] if reason else []))
    else:
        status = PKIStatusInfo.rejection(FailureInfo.BAD_CERT_TEMPLATE if failure is None else failure, *([reason] if reason else []))
    return CertConfBody((CertStatus(cert_hash(cert), cert_req_id, status),))


def rr_body(cert: x509.Certificate, reason: RevocationReason | None = None) -> RrBody:
    return RrBody((RevDetails.for_certificate(cert, reason),))


def genm_body(*kinds: InfoType | InfoTypeAndValue) -> GenmBody:
    return GenmBody(tuple(k if isinstance(k, InfoTypeAndValue) else InfoTypeAndValue.of(k) for k in kinds))


def poll_req_body(*cert_req_ids: int) -> PollReqBody:
    return PollReqBody(tuple(cert_req_ids) or (0,))


# ---- server-side bodies ---------------------------------------------------------------------

_REP_CLASS: dict[BodyType, type[CertRepMessageBody]] = {
    BodyType.IR: IpBody, BodyType.CR: CpBody, BodyType.KUR: KupBody, BodyType.P10CR: CpBody,
    BodyType.IP: IpBody, BodyType.CP: CpBody, BodyType.KUP: KupBody,
}


def cert_rep_body(request_type: BodyType, responses: Iterable[CertResponse], *,
                  ca_pubs: Iterable[x509.Certificate] = ()) -> CertRepMessageBody:
    """ip/cp/kup answering ir/cr(p10cr)/kur."""
    return _REP_CLASS[request_type](tuple(responses), tuple(ca_pubs))


def granted(cert_req_id: int, cert: x509.Certificate, *, status: PKIStatus = PKIStatus.ACCEPTED,
            text: str = "") -> CertResponse:
    return CertResponse(cert_req_id, PKIStatusInfo(status, (text,) if text else ()), cert)


def refused(cert_req_id: int, error: CmpError) -> CertResponse:
    return CertResponse(cert_req_id, PKIStatusInfo.from_error(error))


def waiting(cert_req_id: int, text: str = "") -> CertResponse:
    return CertResponse(cert_req_id, PKIStatusInfo(PKIStatus.WAITING, (text,) if text else ()))


def error_body(error: CmpError) -> ErrorBody:
    """An error body whose PKIStatusInfo carries the error's failInfo bit and text."""
    return ErrorBody(PKIStatusInfo.from_error(error), error_details=(error.detail,))


def pkiconf_body() -> PkiConfBody:
    return PkiConfBody()


def rp_body(statuses: Iterable[PKIStatusInfo], *, rev_certs: Iterable[CertId] = ()) -> RpBody:
    return RpBody(tuple(statuses), tuple(rev_certs))


def genp_body(items: Iterable[InfoTypeAndValue]) -> GenpBody:
    return GenpBody(tuple(items))


def poll_rep_body(cert_req_id: int, check_after: int, reason: str = "") -> PollRepBody:
    return PollRepBody((PollRepEntry(cert_req_id, check_after, (reason,) if reason else ()),))


def response_to(request: PKIMessage | PKIHeader, body: object, **header_options: object) -> PKIMessage:
    """Unprotected response message: :func:`response_header` + ``body``."""
    from .messages import Body

    if not isinstance(body, Body):
        raise TypeError("body must be a typed CMP body")
    hdr = request.header if isinstance(request, PKIMessage) else request
    return PKIMessage(header=response_header(hdr, **header_options), body=body)  # type: ignore[arg-type]


def error_message_for(request: PKIMessage | PKIHeader, error: CmpError, **header_options: object) -> PKIMessage:
    """Unprotected error message answering ``request`` for ``error``."""
    return response_to(request, error_body(error), **header_options)
