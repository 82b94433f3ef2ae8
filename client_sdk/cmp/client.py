"""CMP client: RFC 6712 HTTP transport and the enrollment/revocation/genm flows.

Split like certbot's acme client: :class:`HttpTransport` moves bytes (POST application/pkixcmp,
timeouts, TLS verification on by default), :class:`CmpClient` runs transactions and checks every
response: protection (PBM with our secret, or a signature chaining to ``trusted`` / by the pinned
``server_cert``), transactionID, recipNonce echo, body type, the issued certificate's key - the
checks ONAP CertService skipped.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Sequence
from http.client import RemoteDisconnected
from typing import Protocol

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
    PublicKeyTypes,
)
from urllib3.exceptions import HTTPError, ProtocolError

from . import builders
from .algorithms import DEFAULT_PBM_ITERATIONS, PBMParameters
from .enums import (
    BodyType,
    FailureInfo,
    HashAlgorithm,
    InfoType,
    MacAlgorithm,
    PKIStatus,
    RevocationReason,
)
from .errors import (
    BadDataFormat,
    BadMessageCheck,
    BadRecipientNonce,
    BadRequest,
    CmpError,
    SignerNotTrusted,
    TransportError,
    WrongIntegrity,
    error_from_status,
)
from .messages import (
    Body,
    CertRepMessageBody,
    CrBody,
    ErrorBody,
    GenpBody,
    InfoTypeAndValue,
    IrBody,
    KurBody,
    P10crBody,
    PkiConfBody,
    PKIHeader,
    PKIMessage,
    PollRepBody,
    RpBody,
)
from .protection import (
    PbmKeyCache,
    ProtectionKind,
    pbm_base_key,
    pbm_parameters,
    protect_with_pbm,
    protect_with_signature,
    protection_certificate,
    protection_kind,
    verify_pbm,
    verify_signature,
)
from .trust import verify_chain

CONTENT_TYPE = "application/pkixcmp"
MAX_RESPONSE_SIZE = 1 << 20


class Transport(Protocol):
    """Sends one DER PKIMessage, returns the DER answer."""

    def send(self, request: bytes) -> bytes: ...


class HttpTransport:
    """RFC 6712 over HTTP(S) with requests. TLS verification is on unless ``verify=False``."""

    def __init__(self, url: str, *, timeout: float = 30.0, verify: bool | str = True,
                 client_cert: tuple[str, str] | None = None, session: requests.Session | None = None,
                 max_response_size: int = MAX_RESPONSE_SIZE) -> None:
        self.url = url
        self.timeout = timeout
        self.max_response_size = max_response_size
        self._session = session or requests.Session()
        self._session.verify = verify
        # Passed on every request as well: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the
        # environment override a session's verify (requests#3829), and those are set in many images.
        self._verify = verify
        if client_cert is not None:
            self._session.cert = client_cert

    def __repr__(self) -> str:
        return f"HttpTransport({self.url!r})"

    def send(self, request: bytes) -> bytes:
        """POST ``request``; the response body is read up to ``max_response_size`` (streamed, so a
        huge answer is never buffered). A body read to its end returns the connection to the
        session's pool (keep-alive); one left unread (too large) has its connection closed.

        A kept-alive connection the server closed meanwhile (it answered nothing on it: the
        connection was reset or ended before any response) is replaced once and the message
        sent again; should a server have processed it after all, CMP refuses the repeated
        transactionID rather than acting twice."""
        for attempt in (1, 2):
            try:
                resp = self._session.post(self.url, data=request, timeout=self.timeout, stream=True,
                                          verify=self._verify,
                                          headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE})
                break
            except requests.exceptions.SSLError as exc:
                raise TransportError(f"TLS handshake with {self.url} failed: {type(exc).__name__}") from None
            except requests.exceptions.ConnectionError as exc:
                if attempt == 1 and _closed_by_peer(exc):
                    continue
                raise TransportError(f"cannot reach {self.url}: {type(exc).__name__}") from None
            except requests.RequestException as exc:
                raise TransportError(f"cannot reach {self.url}: {type(exc).__name__}") from None
        try:
            try:  # read (bounded) even an error page, so that its connection can be reused
                body = resp.raw.read(self.max_response_size + 1, decode_content=True)
            except (requests.RequestException, OSError, HTTPError) as exc:
                raise TransportError(f"cannot read the response from {self.url}: {type(exc).__name__}") from None
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype != CONTENT_TYPE:
                raise TransportError(f"HTTP {resp.status_code} with content type {ctype or 'none'} from {self.url}")
            if len(body) > self.max_response_size:
                raise TransportError(f"response from {self.url} exceeds {self.max_response_size} bytes")
            return bytes(body)
        finally:
            # after a complete read urllib3 has already put the connection back in the pool and
            # this is a no-op for it; otherwise the socket is closed now rather than at GC time
            resp.close()

    def close(self) -> None:
        self._session.close()


def _closed_by_peer(exc: requests.exceptions.ConnectionError) -> bool:
    """Whether the request failed because the server had closed the (kept-alive) connection:
    urllib3's "Connection aborted" with the peer's reset or end of stream, no response read."""
    cause = exc.args[0] if exc.args else None
    if not isinstance(cause, ProtocolError) or len(cause.args) < 2:
        return False
    return isinstance(cause.args[1], (RemoteDisconnected, ConnectionResetError, BrokenPipeError))


@dataclasses.dataclass(frozen=True)
class Enrollment:
    """Result of ir/cr/kur/p10cr."""

    certificate: x509.Certificate
    ca_pubs: tuple[x509.Certificate, ...]
    extra_certs: tuple[x509.Certificate, ...]
    implicitly_confirmed: bool


class CmpClient:
    """Runs CMP transactions against one CA.

    Authentication of requests: ``secret`` (+ ``reference`` as senderKID) for PBM, or ``key`` +
    ``cert`` (+ ``chain``) for signatures. Responses must be protected: with PBM by the same
    secret, with a signature by ``server_cert`` (pinned) or a certificate chaining to ``trusted``.
    """

    def __init__(self, transport: Transport | str, *, recipient: x509.Name,
                 sender: x509.Name | None = None, secret: bytes | None = None, reference: bytes | None = None,
                 key: PrivateKeyTypes | None = None, cert: x509.Certificate | None = None,
                 chain: Sequence[x509.Certificate] = (), trusted: Sequence[x509.Certificate] = (),
                 server_cert: x509.Certificate | None = None,
                 pbm_owf: HashAlgorithm = HashAlgorithm.SHA256, pbm_mac: MacAlgorithm = MacAlgorithm.HMAC_SHA256,
                 pbm_iterations: int = DEFAULT_PBM_ITERATIONS, implicit_confirm: bool = False,
                 total_timeout: float = 300.0, sleep: Callable[[float], None] = time.sleep,
                 pbm_salt_lifetime: float = 60.0) -> None:
        if secret is None and (key is None or cert is None):
            raise ValueError("give either secret (PBM) or key and cert (signature)")
        if secret is None and not trusted and server_cert is None:
            raise ValueError("signature-protected responses need trusted anchors or a pinned server_cert")
        self.transport: Transport = HttpTransport(transport) if isinstance(transport, str) else transport
        self.recipient = recipient
        self.sender = sender
        self.secret = secret
        self.reference = reference
        self.key = key
        self.cert = cert
        self.chain = tuple(chain)
        self.trusted = tuple(trusted)
        self.server_cert = server_cert
        self.pbm_owf = pbm_owf
        self.pbm_mac = pbm_mac
        self.pbm_iterations = pbm_iterations
        self.implicit_confirm = implicit_confirm
        self.total_timeout = total_timeout
        self._sleep = sleep
        # PBM: our random salt (and so its derived BASEKEY) is reused for pbm_salt_lifetime seconds
        # (0: a fresh salt per message); BASEKEYs of responses are kept per salt (a server may
        # reuse its salt too). Derived keys only, never more than the secret they come from.
        self.pbm_salt_lifetime = pbm_salt_lifetime
        self._pbm_salt: tuple[float, bytes, bytes] | None = None  # (until, salt, BASEKEY)
        self._response_keys = PbmKeyCache(max_entries=64)

    # ---- public flows ----------------------------------------------------------------------

    def ir(self, key: PrivateKeyTypes | PublicKeyTypes, *, subject: x509.Name,
           extensions: Iterable[x509.Extension[x509.ExtensionType]] | None = None, **template: object) -> Enrollment:
        """Initial registration (PBM or signature protected)."""
        req = builders.cert_request(key, subject=subject, extensions=extensions, **template)  # type: ignore[arg-type]
        return self._enroll(IrBody((req,)), _public(key), subject)

    def cr(self, key: PrivateKeyTypes | PublicKeyTypes, *, subject: x509.Name,
           extensions: Iterable[x509.Extension[x509.ExtensionType]] | None = None, **template: object) -> Enrollment:
        req = builders.cert_request(key, subject=subject, extensions=extensions, **template)  # type: ignore[arg-type]
        return self._enroll(CrBody((req,)), _public(key), subject)

    def kur(self, new_key: PrivateKeyTypes, *, old_cert: x509.Certificate | None = None,
            old_key: PrivateKeyTypes | None = None, subject: x509.Name | None = None,
            extensions: Iterable[x509.Extension[x509.ExtensionType]] | None = None) -> Enrollment:
        """Key update, signed by the certificate being updated (default: this client's cert/key)."""
        old_cert = old_cert or self.cert
        old_key = old_key or self.key
        if old_cert is None or old_key is None:
            raise ValueError("kur needs the old certificate and its key")
        req = builders.cert_request(new_key, subject=subject or old_cert.subject, extensions=extensions,
                                    old_cert=old_cert)
        return self._enroll(KurBody((req,)), new_key.public_key(), subject or old_cert.subject,
                            signer=(old_key, old_cert))

    def p10cr(self, csr: x509.CertificateSigningRequest) -> Enrollment:
        return self._enroll(P10crBody(csr), csr.public_key(), csr.subject)

    def revoke(self, cert: x509.Certificate, reason: RevocationReason | None = None) -> None:
        rsp = self._transact(builders.rr_body(cert, reason), expect=(BodyType.RP,))
        body = rsp.body
        assert isinstance(body, RpBody)
        if not body.statuses:
            raise BadDataFormat("rp without status")
        st = body.statuses[0]
        if st.status not in (PKIStatus.ACCEPTED, PKIStatus.GRANTED_WITH_MODS,
                             PKIStatus.REVOCATION_WARNING, PKIStatus.REVOCATION_NOTIFICATION):
            raise error_from_status(st, context="revocation refused")

    def general_message(self, *items: InfoType | InfoTypeAndValue) -> tuple[InfoTypeAndValue, ...]:
        rsp = self._transact(builders.genm_body(*items), expect=(BodyType.GENP,))
        assert isinstance(rsp.body, GenpBody)
        return rsp.body.items

    def ca_certs(self) -> tuple[x509.Certificate, ...]:
        for item in self.general_message(InfoType.CA_CERTS):
            if item.kind is InfoType.CA_CERTS:
                return item.as_certificates()
        return ()

    # ---- machinery -------------------------------------------------------------------------

    def _header(self, *, implicit_confirm: bool = False) -> PKIHeader:
        sender = self.sender or (self.cert.subject if self.cert is not None and self.secret is None else x509.Name([]))
        return builders.request_header(sender=sender, recipient=self.recipient, sender_kid=self.reference,
                                       implicit_confirm=implicit_confirm)

    def _protect(self, msg: PKIMessage, signer: tuple[PrivateKeyTypes, x509.Certificate] | None = None) -> PKIMessage:
        if signer is not None:
            return protect_with_signature(msg, signer[0], cert=signer[1], chain=self.chain)
        if self.secret is not None:
            salt, base_key = self._request_salt()
            return protect_with_pbm(msg, self.secret, sender_kid=self.reference, owf=self.pbm_owf,
                                    mac=self.pbm_mac, iteration_count=self.pbm_iterations, salt=salt,
                                    base_key=base_key)
        assert self.key is not None and self.cert is not None
        return protect_with_signature(msg, self.key, cert=self.cert, chain=self.chain)

    def _request_salt(self) -> tuple[bytes | None, bytes | None]:
        if self.pbm_salt_lifetime <= 0 or self.secret is None:
            return None, None
        now = time.monotonic()
        if self._pbm_salt is None or self._pbm_salt[0] <= now:
            salt = os.urandom(16)
            params = PBMParameters(salt=salt, owf=self.pbm_owf, iteration_count=self.pbm_iterations,
                                   mac=self.pbm_mac)
            self._pbm_salt = (now + self.pbm_salt_lifetime, salt, pbm_base_key(self.secret, params))
        return self._pbm_salt[1], self._pbm_salt[2]

    def _exchange(self, msg: PKIMessage, *, expect: tuple[BodyType, ...]) -> PKIMessage:
        rsp = PKIMessage.decode(self.transport.send(msg.encode()))
        self._check_response(msg.header, rsp)
        if isinstance(rsp.body, ErrorBody):
            raise error_from_status(rsp.body.status_info, context="CMP server error")
        if rsp.body_type not in expect:
            raise BadRequest(f"unexpected {rsp.body_type.asn1_name} answering {msg.body_type.asn1_name}")
        return rsp

    def _transact(self, body: Body, *, expect: tuple[BodyType, ...]) -> PKIMessage:
        msg = self._protect(PKIMessage(self._header(), body))
        return self._exchange(msg, expect=expect)

    def _check_response(self, request: PKIHeader, rsp: PKIMessage) -> None:
        h = rsp.header
        if h.transaction_id != request.transaction_id:
            raise BadDataFormat("response transactionID does not match the request")
        if h.recip_nonce != request.sender_nonce:
            raise BadRecipientNonce("response recipNonce does not echo our senderNonce")
        if h.pvno not in (2, 3):
            raise BadDataFormat(f"response pvno {h.pvno}")
        kind = protection_kind(rsp)
        if kind is ProtectionKind.NONE:
            raise BadMessageCheck("response is not protected")
        if kind is ProtectionKind.MAC:
            if self.secret is None:
                raise WrongIntegrity("MAC-protected response but no shared secret configured")
            secret = self.secret
            params = pbm_parameters(rsp)  # bounds checked before any derivation
            verify_pbm(rsp, secret, base_key=self._response_keys.get(b"", params, lambda: secret))
            return
        if kind is ProtectionKind.SIGNATURE:
            signer = self.server_cert or protection_certificate(rsp)
            if signer is None:
                raise SignerNotTrusted("signed response without the signer's certificate")
            if self.server_cert is None:
                verify_chain(signer, trust_anchors=self.trusted, untrusted=rsp.extra_certs)
            verify_signature(rsp, signer)
            return
        verify_pbm(rsp, b"")  # raises BadAlg with the reason

    def _enroll(self, body: Body, public_key: PublicKeyTypes, subject: x509.Name,
                signer: tuple[PrivateKeyTypes, x509.Certificate] | None = None) -> Enrollment:
        rep_types = {BodyType.IR: BodyType.IP, BodyType.CR: BodyType.CP, BodyType.P10CR: BodyType.CP,
                     BodyType.KUR: BodyType.KUP}
        expected = rep_types[body.body_type]
        req = self._protect(PKIMessage(self._header(implicit_confirm=self.implicit_confirm), body), signer)
        rsp = self._exchange(req, expect=(expected,))
        deadline = time.monotonic() + self.total_timeout
        last_req = req
        cert_req_id = 0 if body.body_type is BodyType.P10CR else body.requests[0].cert_req_id  # type: ignore[attr-defined]
        while True:
            rep = rsp.body
            assert isinstance(rep, CertRepMessageBody)
            one = rep.response_for(cert_req_id) or (rep.responses[0] if len(rep.responses) == 1 else None)
            if one is None:
                raise BadDataFormat(f"no response for certReqId {cert_req_id}")
            if one.status.status is not PKIStatus.WAITING:
                break
            rsp, last_req = self._poll(last_req, rsp, cert_req_id, expected, deadline, signer)
        if one.status.status not in (PKIStatus.ACCEPTED, PKIStatus.GRANTED_WITH_MODS):
            raise error_from_status(one.status, context="certificate request refused")
        cert = one.certificate
        if cert is None:
            raise BadDataFormat("accepted response without a certificate")
        fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        problem = None
        if cert.public_key().public_bytes(*fmt) != public_key.public_bytes(*fmt):
            problem = "issued certificate carries a different public key"
        implicit = self.implicit_confirm and rsp.header.implicit_confirm
        if implicit and problem is None:
            return Enrollment(cert, rep.ca_pubs, rsp.extra_certs, True)
        conf = builders.cert_conf_body(cert, cert_req_id=one.cert_req_id, accept=problem is None,
                                       reason=problem or "", failure=FailureInfo.BAD_CERT_TEMPLATE)
        conf_msg = self._protect(PKIMessage(builders.followup_header(last_req.header, rsp.header), conf), signer)
        ack = self._exchange(conf_msg, expect=(BodyType.PKICONF,))
        assert isinstance(ack.body, PkiConfBody)
        if problem is not None:
            raise BadDataFormat(problem)
        return Enrollment(cert, rep.ca_pubs, rsp.extra_certs, False)

    def _poll(self, last_req: PKIMessage, rsp: PKIMessage, cert_req_id: int, expected: BodyType,
              deadline: float, signer: tuple[PrivateKeyTypes, x509.Certificate] | None) -> tuple[PKIMessage, PKIMessage]:
        check_after = 0
        while True:
            if check_after:
                if time.monotonic() + check_after > deadline:
                    raise CmpError("enrollment polling exceeded the total timeout")
                self._sleep(check_after)
            poll = self._protect(PKIMessage(builders.followup_header(last_req.header, rsp.header),
                                            builders.poll_req_body(cert_req_id)), signer)
            nxt = self._exchange(poll, expect=(BodyType.POLLREP, expected))
            if isinstance(nxt.body, PollRepBody):
                entry = nxt.body.entries[0] if nxt.body.entries else None
                if entry is None:
                    raise BadDataFormat("empty pollRep")
                check_after = max(1, min(entry.check_after, 3600))
                last_req, rsp = poll, nxt
                continue
            return nxt, poll


def _public(key: PrivateKeyTypes | PublicKeyTypes) -> PublicKeyTypes:
    return key.public_key() if hasattr(key, "sign") else key  # type: ignore[union-attr,return-value]

