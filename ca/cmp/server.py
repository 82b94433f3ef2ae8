"""CMP server protocol logic (RFC 4210/9480, Lightweight CMP profile RFC 9483). No HTTP here.

``CmpServer(profile, issuer=..., transactions=..., signer=...).handle(der) -> der`` never raises for
bad input: every failure becomes an ``error`` message (or, for a refused certificate request, an
ip/cp/kup with a rejection status) whose PKIStatusInfo carries the CmpError leaf's failInfo bit.
Responses are MAC-protected with the requester's secret when the request was MAC-authenticated,
otherwise signed by ``signer``; an error to an unauthenticated request is signed if a signer exists
and unprotected otherwise.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hmac
import logging
import os
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pyasn1.type import univ
from pyasn1_alt_modules import rfc5280, rfc9480

from client_sdk.cmp import (
    BodyType,
    CertConfBody,
    CertReqMessagesBody,
    ErrorBody,
    GenmBody,
    HashAlgorithm,
    InfoType,
    InfoTypeAndValue,
    P10crBody,
    PBMParameters,
    PbmKeyCache,
    PKIHeader,
    PKIMessage,
    PKIStatusInfo,
    PollReqBody,
    ProtectionKind,
    RrBody,
    builders,
    errors,
    pbm_base_key,
    pbm_parameters,
    protect_with_pbm,
    protect_with_signature,
    protection_certificate,
    protection_kind,
    verify_chain,
    verify_pbm,
    verify_pop,
    verify_signature,
)
from client_sdk.cmp import _asn1
from client_sdk.cmp.messages import Body, CertId, PkiConfBody

from .interfaces import (
    AuthKind,
    CmpProfileConfig,
    Issuer,
    IssuedCertificate,
    IssueRequest,
    Requester,
    ResponseSigner,
    Transaction,
    TransactionState,
    TransactionStore,
)

log = logging.getLogger(__name__)

MIN_NONCE = 16  # RFC 9483 §3.1: transactionID and senderNonce carry at least 128 bits
#: A MAC-protected response reuses its random PBM salt (and so its derived BASEKEY) for this long
#: per shared secret: the iterations are paid once a minute, not per response.
RESPONSE_SALT_LIFETIME = 60.0


@dataclasses.dataclass
class _Outcome:
    body: Body
    implicit_confirm: bool = False
    confirm_wait_time: _dt.datetime | None = None
    extra_certs: tuple[x509.Certificate, ...] = ()
    #: the handler's last transaction write already stored the response's senderNonce (or
    #: finished the transaction): no separate nonce write after the response is built
    nonce_recorded: bool = False


class CmpServer:
    """One CMP alias. Thread-safe as long as the collaborators are."""

    def __init__(self, profile: CmpProfileConfig, *, issuer: Issuer, transactions: TransactionStore,
                 signer: ResponseSigner | None = None,
                 clock: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.timezone.utc)) -> None:
        self.profile = profile
        self.issuer = issuer
        self.transactions = transactions
        self.signer = signer
        self._clock = clock
        self._pbm_keys: dict[bytes, tuple[float, bytes, bytes]] = {}  # senderKID -> (until, salt, BASEKEY)
        # BASEKEYs of requests per (senderKID, salt, ...): a client that reuses its salt (as this
        # server does, and csm's SDK client) costs one derivation per salt. The server object is
        # rebuilt when its profile (and so a secret) changes, which drops both caches.
        self._request_pbm_keys = PbmKeyCache()
        # handlers get the request, the authenticated requester and the senderNonce the response
        # will carry (so that it is stored with the handler's own transaction write)
        self._dispatch: dict[BodyType, Callable[[PKIMessage, Requester, bytes], _Outcome]] = {
            BodyType.IR: self._enroll,
            BodyType.CR: self._enroll,
            BodyType.KUR: self._enroll,
            BodyType.P10CR: self._enroll,
            BodyType.CERTCONF: self._cert_conf,
            BodyType.POLLREQ: self._poll,
            BodyType.RR: self._revoke,
            BodyType.GENM: self._general,
            BodyType.ERROR: self._client_error,
        }

    # ---- entry point -------------------------------------------------------------------------

    def handle(self, request: bytes) -> bytes:
        """DER request → DER response. Never raises for bad input."""
        try:
            msg = PKIMessage.decode(request)
        except errors.CmpError as exc:
            header = builders.request_header() if (h := _lenient(request)) is None else h
            return self._error(header, exc, None)
        requester: Requester | None = None
        nonce = builders.new_nonce()
        try:
            requester = self._authenticate(msg)
            if requester.auth is AuthKind.MAC and msg.body_type not in self.profile.mac_allowed_for:
                raise errors.WrongIntegrity(f"{msg.body_type.asn1_name} must be signature-protected")
            self._check_header(msg)
            handler = self._dispatch.get(msg.body_type)
            if handler is None:
                raise errors.BadRequest(f"{msg.body_type.asn1_name} is not supported by this server")
            outcome = handler(msg, requester, nonce)
            return self._respond(msg.header, outcome, requester, nonce)
        except errors.CmpError as exc:
            return self._error(msg.header, exc, requester, nonce)
        except Exception as exc:  # a collaborator failed: answer, log, leak nothing
            log.exception("CMP request on profile %s failed", self.profile.name)
            return self._error(msg.header, self._unexpected(exc), requester, nonce)

    # ---- protection and header checks ---------------------------------------------------------

    def _authenticate(self, msg: PKIMessage) -> Requester:
        p = self.profile
        h = msg.header
        kind = protection_kind(msg)
        if kind is ProtectionKind.NONE:
            if p.require_protection:
                raise errors.BadMessageCheck("request is not protected")
            return Requester(p.name, AuthKind.NONE, h.sender, h.sender_kid)
        if kind is ProtectionKind.UNSUPPORTED:
            verify_pbm(msg, b"")  # raises BadAlg with the reason
        if kind is ProtectionKind.MAC:
            kid = h.sender_kid
            secrets = p.shared_secrets
            if kid is None or kid not in secrets:
                raise errors.BadMessageCheck("unknown reference (senderKID) for MAC-based protection")
            bounds = {"max_iterations": p.pbm_max_iterations, "min_iterations": p.pbm_min_iterations}
            params = pbm_parameters(msg, **bounds)  # bounds first: nothing is derived for absurd counts
            key = self._request_pbm_keys.get(kid, params, lambda: secrets[kid])
            verify_pbm(msg, b"", base_key=key, **bounds)
            return Requester(p.name, AuthKind.MAC, h.sender, h.sender_kid)
        signer = protection_certificate(msg)
        if signer is None:
            raise errors.SignerNotTrusted("signature-protected request without the signer certificate in extraCerts")
        verify_signature(msg, signer)
        verify_chain(signer, trust_anchors=p.trust_anchors, untrusted=msg.extra_certs, at=self._clock())
        if h.sender_name is not None and h.sender_name != signer.subject:
            raise errors.BadMessageCheck("sender does not match the protection certificate's subject")
        if self.issuer.is_revoked(signer):
            raise errors.CertRevoked("the protection certificate is revoked")
        return Requester(p.name, AuthKind.SIGNATURE, h.sender, h.sender_kid, signer)

    def _check_header(self, msg: PKIMessage) -> None:
        h = msg.header
        if h.pvno not in (2, 3):
            raise errors.UnsupportedVersion(f"pvno {h.pvno} is not supported (2 or 3)")
        uses_v3 = isinstance(msg.body, CertConfBody) and any(s.hash_alg is not None for s in msg.body.statuses)
        if uses_v3 and h.pvno != 3:
            raise errors.UnsupportedVersion("certConf hashAlg requires pvno 3 (RFC 9480)")
        rn = h.recipient_name
        if rn is not None and len(rn) and rn != self.profile.ca_name:
            raise errors.WrongAuthority(f"recipient {rn.rfc4514_string()} is not this CA")
        if h.transaction_id is None or len(h.transaction_id) < MIN_NONCE:
            raise errors.BadRequest("transactionID missing or shorter than 128 bits")
        if h.sender_nonce is None or len(h.sender_nonce) < MIN_NONCE:
            raise errors.BadSenderNonce("senderNonce missing or shorter than 128 bits")
        if h.message_time is not None:
            skew = abs(self._clock() - h.message_time)
            if skew > self.profile.message_time_window:
                raise errors.BadTime(f"messageTime is {int(skew.total_seconds())} s off")

    # ---- responses ----------------------------------------------------------------------------

    def _protect(self, msg: PKIMessage, requester: Requester | None) -> PKIMessage:
        p = self.profile
        if not p.protect_responses:
            return msg
        if requester is not None and requester.auth is AuthKind.MAC:
            salt, base_key = self._response_pbm_key(requester.sender_kid or b"")
            return protect_with_pbm(msg, b"", sender_kid=p.name.encode(), owf=p.response_pbm_owf,
                                    mac=p.response_pbm_mac, iteration_count=p.response_pbm_iterations,
                                    salt=salt, base_key=base_key)
        if self.signer is not None:
            s = self.signer
            return protect_with_signature(msg, s.key, cert=s.certificate, chain=(*s.chain, *msg.extra_certs))
        return msg

    def _response_pbm_key(self, kid: bytes) -> tuple[bytes, bytes]:
        """(salt, BASEKEY) for MAC-protecting responses to ``kid``'s secret; a fresh random salt
        (and one derivation) per secret every RESPONSE_SALT_LIFETIME seconds. The server object
        is rebuilt when its profile changes, so a changed secret never meets an old key."""
        now = time.monotonic()
        hit = self._pbm_keys.get(kid)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        p = self.profile
        salt = os.urandom(16)
        params = PBMParameters(salt=salt, owf=p.response_pbm_owf, iteration_count=p.response_pbm_iterations,
                               mac=p.response_pbm_mac)
        key = pbm_base_key(p.shared_secrets[kid], params)
        if len(self._pbm_keys) > 256:
            self._pbm_keys.clear()
        self._pbm_keys[kid] = (now + RESPONSE_SALT_LIFETIME, salt, key)
        return salt, key

    def _respond(self, request: PKIHeader, out: _Outcome, requester: Requester | None,
                 nonce: bytes | None = None) -> bytes:
        sender: x509.Name | x509.GeneralName = self.profile.ca_name
        hdr = builders.response_header(request, sender=sender, implicit_confirm=out.implicit_confirm,
                                       confirm_wait_time=out.confirm_wait_time, now=self._now(),
                                       sender_nonce=nonce)
        msg = PKIMessage(header=hdr, body=out.body, extra_certs=out.extra_certs)
        msg = self._protect(msg, requester)
        if not out.nonce_recorded:
            self._remember_nonce(request, msg.header)
        return msg.encode()

    def _error(self, request: PKIHeader, error: errors.CmpError, requester: Requester | None,
               nonce: bytes | None = None) -> bytes:
        log.info("CMP %s on profile %s: %s", type(error).__name__, self.profile.name, error.detail)
        try:
            return self._respond(request, _Outcome(builders.error_body(error)), requester, nonce)
        except Exception:
            log.exception("cannot build a CMP error response")
            hdr = builders.response_header(builders.request_header(), sender=self.profile.ca_name)
            return PKIMessage(hdr, builders.error_body(errors.SystemFailure("internal error"))).encode()

    def _remember_nonce(self, request: PKIHeader, response: PKIHeader) -> None:
        tid = request.transaction_id
        if tid is None or response.sender_nonce is None:
            return
        try:
            txn = self.transactions.lookup(self.profile.name, tid)
        except Exception:
            return
        if txn is not None and txn.state is not TransactionState.FINISHED:
            self.transactions.update(dataclasses.replace(txn, server_nonce=response.sender_nonce))

    def _now(self) -> _dt.datetime:
        return self._clock().replace(microsecond=0)

    # ---- transactions ---------------------------------------------------------------------------

    def _begin(self, msg: PKIMessage, requester: Requester, state: TransactionState, nonce: bytes,
               **fields: object) -> Transaction:
        """Store the new transaction with ``nonce``, the senderNonce of the answer to ``msg``."""
        txn = self._new_transaction(msg, requester, state, nonce, **fields)
        self.transactions.begin(txn)
        return txn

    def _new_transaction(self, msg: PKIMessage, requester: Requester, state: TransactionState, nonce: bytes,
                         **fields: object) -> Transaction:
        """A new transaction for ``msg``, not stored yet; TransactionIdInUse if its ID is known."""
        h = msg.header
        if h.recip_nonce is not None:
            raise errors.BadRecipientNonce("the first message of a transaction carries no recipNonce")
        tid = h.transaction_id or b""
        if self.transactions.in_use(self.profile.name, tid):
            raise errors.TransactionIdInUse("transactionID already in use")
        return Transaction(transaction_id=tid, profile=self.profile.name, state=state, requester=requester,
                           request_type=msg.body_type, server_nonce=nonce, created=self._now(),
                           **fields)  # type: ignore[arg-type]

    def _unexpected(self, exc: Exception) -> errors.CmpError:
        """The answer to a collaborator's unexpected failure: systemFailure, no details (a
        subclass may recognise a temporary condition and answer systemUnavail)."""
        return errors.SystemFailure("internal error")

    def _answering(self, body: Body) -> None:
        """Called with the answer's body before the write that concludes the exchange (the
        answer is then this one unless something fails after that write). A hook for
        subclasses (the service records the outcome with that write); nothing here."""

    def _continue(self, msg: PKIMessage, requester: Requester) -> Transaction:
        h = msg.header
        txn = self.transactions.lookup(self.profile.name, h.transaction_id or b"")
        if txn is None:
            raise errors.BadRequest("no such transaction")
        if txn.state is TransactionState.FINISHED:
            raise errors.TransactionIdInUse("transaction already finished")
        if h.recip_nonce is None or not hmac.compare_digest(h.recip_nonce, txn.server_nonce):
            raise errors.BadRecipientNonce("recipNonce does not echo the server's last senderNonce")
        if not requester.same_as(txn.requester):
            raise errors.NotAuthorized("transaction belongs to another requester")
        return txn

    # ---- handlers -------------------------------------------------------------------------------

    def _enroll(self, msg: PKIMessage, requester: Requester, nonce: bytes) -> _Outcome:
        p = self.profile
        body = msg.body
        old_cert: x509.Certificate | None = None
        if isinstance(body, P10crBody):
            if not body.csr.is_signature_valid:
                raise errors.BadPOP("PKCS#10 signature does not verify")
            cert_req_id = 0
            req = IssueRequest(p.name, BodyType.P10CR, body.csr.subject, body.csr.public_key(), requester,
                               tuple(body.csr.extensions), csr=body.csr)
        else:
            assert isinstance(body, CertReqMessagesBody)
            if len(body.requests) != 1:
                raise errors.BadRequest("exactly one certificate request per message (RFC 9483)")
            crm = body.requests[0]
            cert_req_id = crm.cert_req_id
            tpl = crm.template
            if tpl.public_key is None:
                raise errors.BadCertTemplate("certificate template without a public key")
            verify_pop(crm, accept_ra_verified=p.allow_ra_verified_pop and requester.auth is AuthKind.SIGNATURE)
            subject = tpl.subject
            if body.body_type is BodyType.KUR:
                old_cert = self._check_kur(crm.old_cert_id, requester, tpl.public_key)
                if subject is not None and subject != old_cert.subject:
                    raise errors.BadCertTemplate("kur must keep the subject of the certificate it updates")
                subject = old_cert.subject
            if subject is None or not len(subject):
                raise errors.BadCertTemplate("certificate template without a subject")
            req = IssueRequest(p.name, body.body_type, subject, tpl.public_key, requester, tpl.extensions,
                               tpl.not_before, tpl.not_after, old_certificate=old_cert)
        implicit = msg.header.implicit_confirm and p.implicit_confirm_allowed
        if p.approval_required:
            self._begin(msg, requester, TransactionState.PENDING_APPROVAL, nonce, cert_req_id=cert_req_id,
                        issue_request=req, implicit_confirm=implicit)
            return _Outcome(builders.cert_rep_body(msg.body_type, [builders.waiting(cert_req_id, "awaiting approval")]),
                            nonce_recorded=True)
        # The new transaction is stored with the certificate (one unit of work, see _grant); a
        # replayed ID is refused before anything is signed.
        txn = self._new_transaction(msg, requester, TransactionState.WAITING_CONFIRM, nonce,
                                    cert_req_id=cert_req_id, implicit_confirm=implicit)
        return self._grant(txn, req, msg.body_type, cert_req_id, nonce, new=True)

    def _grant(self, txn: Transaction, req: IssueRequest, request_type: BodyType, cert_req_id: int,
               nonce: bytes, *, new: bool = False) -> _Outcome:
        """Issue for ``txn`` (``new``: not stored yet). The transaction's final row (finished,
        or waiting for certConf) is staged when the certificate is signed, so that the store
        writes it in the certificate's own unit of work: one write per exchange."""
        staged: list[tuple[x509.Certificate, _Outcome]] = []

        def before_store(issued: IssuedCertificate) -> None:
            out, final = self._granted(txn, issued, request_type, cert_req_id, nonce)
            self._answering(out.body)
            self.transactions.stage(final, new=new)
            staged[:] = [(issued.certificate, out)]

        try:
            try:
                issued = self.issuer.issue(req, before_store=before_store)
            except BaseException:  # nothing was stored: neither is the row staged for it
                self.transactions.discard_staged()
                raise
        except errors.TransactionIdInUse:  # the staged row's ID was taken meanwhile: nothing was stored
            raise
        except errors.CmpError as exc:  # refused by policy: answer in the ip/cp/kup itself
            body = builders.cert_rep_body(request_type, [builders.refused(cert_req_id, exc)])
            self._answering(body)
            done = dataclasses.replace(txn, state=TransactionState.FINISHED, reason=exc.detail)
            if new:
                self.transactions.begin(done)
            else:
                self.transactions.finish(done)
            return _Outcome(body, nonce_recorded=True)
        self.transactions.flush_staged()
        if staged and staged[0][0] == issued.certificate:
            return staged[0][1]
        # an issuer that did not call before_store: store the transaction now
        out, final = self._granted(txn, issued, request_type, cert_req_id, nonce)
        if new:
            self.transactions.begin(final)
        else:
            self.transactions.update(final)
        return out

    def _granted(self, txn: Transaction, issued: IssuedCertificate, request_type: BodyType, cert_req_id: int,
                 nonce: bytes) -> tuple[_Outcome, Transaction]:
        """The answer granting ``issued`` and the transaction as it is then stored."""
        ca_pubs = self._ca_pubs() if request_type is BodyType.IR and self.profile.return_ca_pubs else ()
        body = builders.cert_rep_body(request_type, [builders.granted(cert_req_id, issued.certificate)],
                                      ca_pubs=ca_pubs)
        if txn.implicit_confirm:
            return (_Outcome(body, implicit_confirm=True, extra_certs=issued.chain, nonce_recorded=True),
                    dataclasses.replace(txn, state=TransactionState.FINISHED, certificate=issued.certificate,
                                        chain=issued.chain))
        deadline = self._now() + self.profile.confirm_timeout
        return (_Outcome(body, confirm_wait_time=deadline, extra_certs=issued.chain, nonce_recorded=True),
                dataclasses.replace(txn, state=TransactionState.WAITING_CONFIRM, certificate=issued.certificate,
                                    chain=issued.chain, confirm_deadline=deadline, server_nonce=nonce))

    def _ca_pubs(self) -> tuple[x509.Certificate, ...]:
        return tuple(c for c in self.issuer.ca_certificates() if c.subject == c.issuer)

    def _check_kur(self, old_id: CertId | None, requester: Requester, new_key: object) -> x509.Certificate:
        if requester.auth is not AuthKind.SIGNATURE or requester.certificate is None:
            raise errors.WrongIntegrity("kur must be signature-protected with the certificate being updated")
        old = requester.certificate
        if old_id is not None:
            if old_id.serial_number != old.serial_number or old_id.issuer != x509.DirectoryName(old.issuer):
                raise errors.BadCertId("oldCertID does not name the protection certificate")
        fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if not self.profile.allow_same_key_kur and \
                old.public_key().public_bytes(*fmt) == new_key.public_bytes(*fmt):  # type: ignore[attr-defined]
            raise errors.BadCertTemplate("kur must use a new key")
        return old

    def _cert_conf(self, msg: PKIMessage, requester: Requester, nonce: bytes) -> _Outcome:
        txn = self._continue(msg, requester)
        body = msg.body
        assert isinstance(body, CertConfBody)
        if txn.state is not TransactionState.WAITING_CONFIRM or txn.certificate is None:
            raise errors.BadRequest("no certificate awaits confirmation in this transaction")
        if txn.confirm_deadline is not None and self._now() > txn.confirm_deadline:
            self._revoke_unconfirmed(txn, "confirmation arrived too late")
            raise errors.BadRequest("certificate confirmation arrived after confirmWaitTime; certificate revoked")
        if len(body.statuses) != 1:
            raise errors.BadRequest("certConf must confirm exactly the one issued certificate")
        st = body.statuses[0]
        if st.cert_req_id != txn.cert_req_id:
            raise errors.BadRequest(f"certConf for unknown certReqId {st.cert_req_id}")
        hash_alg = None
        if st.hash_alg is not None:
            try:
                hash_alg = HashAlgorithm(st.hash_alg.dotted_string)
            except ValueError:
                raise errors.BadAlg(f"unsupported certConf hashAlg {st.hash_alg.dotted_string}") from None
        if not hmac.compare_digest(st.cert_hash, builders.cert_hash(txn.certificate, hash_alg)):
            raise errors.BadCertId("certHash does not match the issued certificate")
        answer = builders.pkiconf_body()
        self._answering(answer)
        if not st.accepted:
            reason = "; ".join(st.status_info.status_strings) if st.status_info else ""
            self._revoke_unconfirmed(txn, f"rejected by the requester: {reason}".rstrip(": "))
        else:
            self.transactions.finish(dataclasses.replace(txn, state=TransactionState.FINISHED))
        return _Outcome(answer, nonce_recorded=True)

    def _revoke_unconfirmed(self, txn: Transaction, reason: str) -> None:
        from client_sdk.cmp import RevocationReason

        assert txn.certificate is not None
        try:
            self.issuer.revoke(txn.certificate.serial_number, txn.certificate.issuer,
                               RevocationReason.CESSATION_OF_OPERATION, txn.requester)
        except errors.CertRevoked:
            pass
        self.transactions.finish(dataclasses.replace(txn, state=TransactionState.FINISHED, reason=reason))

    def _poll(self, msg: PKIMessage, requester: Requester, nonce: bytes) -> _Outcome:
        txn = self._continue(msg, requester)
        body = msg.body
        assert isinstance(body, PollReqBody)
        if txn.cert_req_id not in body.cert_req_ids:
            raise errors.BadRequest("pollReq for an unknown certReqId")
        reply = txn.request_type
        if txn.state is TransactionState.PENDING_APPROVAL:
            return _Outcome(builders.poll_rep_body(txn.cert_req_id, self.profile.poll_interval, "awaiting approval"))
        if txn.state is TransactionState.REJECTED:
            self.transactions.finish(dataclasses.replace(txn, state=TransactionState.FINISHED))
            err = errors.NotAuthorized(txn.reason or "request rejected by an operator")
            return _Outcome(builders.cert_rep_body(reply, [builders.refused(txn.cert_req_id, err)]),
                            nonce_recorded=True)
        if txn.state is TransactionState.APPROVED and txn.issue_request is not None:
            return self._grant(txn, txn.issue_request, reply, txn.cert_req_id, nonce)
        raise errors.BadRequest("nothing to poll for in this transaction")

    def _revoke(self, msg: PKIMessage, requester: Requester, nonce: bytes) -> _Outcome:
        body = msg.body
        assert isinstance(body, RrBody)
        if len(body.requests) != 1:
            raise errors.BadRequest("exactly one revocation per message (RFC 9483)")
        d = body.requests[0]
        if d.serial_number is None or d.issuer is None:
            raise errors.BadCertTemplate("rr certDetails must carry issuer and serialNumber")
        if self.profile.revocation_by_owner_only:
            own = requester.certificate
            if requester.auth is not AuthKind.SIGNATURE or own is None or \
                    (own.serial_number, own.issuer) != (d.serial_number, d.issuer):
                raise errors.NotAuthorized("rr must be signed with the certificate to be revoked")
        self._begin(msg, requester, TransactionState.FINISHED, nonce)
        cid = CertId(x509.DirectoryName(d.issuer), d.serial_number)
        try:
            self.issuer.revoke(d.serial_number, d.issuer, d.reason, requester)
        except errors.CmpError as exc:
            return _Outcome(builders.rp_body([PKIStatusInfo.from_error(exc)], rev_certs=[cid]), nonce_recorded=True)
        return _Outcome(builders.rp_body([PKIStatusInfo.accepted()], rev_certs=[cid]), nonce_recorded=True)

    def _general(self, msg: PKIMessage, requester: Requester, nonce: bytes) -> _Outcome:
        body = msg.body
        assert isinstance(body, GenmBody)
        txn = self._new_transaction(msg, requester, TransactionState.FINISHED, nonce)
        wanted = [i.kind for i in body.items] or [InfoType.CA_CERTS]
        items: list[InfoTypeAndValue] = []
        for kind in wanted:
            if kind is InfoType.CA_CERTS:
                items.append(InfoTypeAndValue.certificates(InfoType.CA_CERTS, self.issuer.ca_certificates()))
            elif kind in (InfoType.ROOT_CA_KEY_UPDATE, InfoType.ROOT_CA_CERT):
                # RFC 9483 §4.3.2 asks with id-it-rootCaCert (the client's old root), RFC 4210 with
                # id-it-rootCaKeyUpdate; both are answered with id-it-rootCaKeyUpdate, its value
                # absent when there is no update.
                upd = self.issuer.root_ca_key_update()
                items.append(InfoTypeAndValue.of(InfoType.ROOT_CA_KEY_UPDATE,
                                                 _root_update_der(upd) if upd is not None else None))
            elif kind is InfoType.CERT_REQ_TEMPLATE:
                tpl = self.profile.cert_req_template
                items.append(InfoTypeAndValue.of(kind, _template_der(tpl) if tpl is not None else None))
            elif kind is InfoType.SIGN_KEY_PAIR_TYPES:
                items.append(InfoTypeAndValue.of(kind, _key_types_der(self.profile)))
        answer = builders.genp_body(items)
        self._answering(answer)
        self.transactions.begin(txn)
        return _Outcome(answer, nonce_recorded=True)

    def _client_error(self, msg: PKIMessage, requester: Requester, nonce: bytes) -> _Outcome:
        txn = self._continue(msg, requester)
        body = msg.body
        assert isinstance(body, ErrorBody)
        reason = "; ".join(body.status_info.status_strings) or "client reported an error"
        answer = PkiConfBody()
        self._answering(answer)
        if txn.state is TransactionState.WAITING_CONFIRM and txn.certificate is not None:
            self._revoke_unconfirmed(txn, reason)
        else:
            self.transactions.finish(dataclasses.replace(txn, state=TransactionState.FINISHED, reason=reason))
        return _Outcome(answer, nonce_recorded=True)


def _lenient(der: bytes) -> PKIHeader | None:
    from client_sdk.cmp import decode_header_lenient

    return decode_header_lenient(der)


def _root_update_der(upd: object) -> bytes:
    from .interfaces import RootCaKeyUpdate

    assert isinstance(upd, RootCaKeyUpdate)
    v = rfc9480.RootCaKeyUpdateValue()
    v["newWithNew"] = _asn1.cert_from_x509(upd.new_with_new, rfc9480.CMPCertificate())
    if upd.new_with_old is not None:
        v["newWithOld"] = _asn1.cert_from_x509(upd.new_with_old, _asn1.slot(v, "newWithOld"))
    if upd.old_with_new is not None:
        v["oldWithNew"] = _asn1.cert_from_x509(upd.old_with_new, _asn1.slot(v, "oldWithNew"))
    return _asn1.encode(v)


def _template_der(tpl: object) -> bytes:
    from client_sdk.cmp import CertTemplate

    assert isinstance(tpl, CertTemplate)
    v = rfc9480.CertReqTemplateValue()
    v["certTemplate"] = tpl.to_asn1(_asn1.slot(v, "certTemplate"))
    return _asn1.encode(v)


def _key_types_der(profile: CmpProfileConfig) -> bytes:
    v = rfc9480.SignKeyPairTypesValue()
    for kt in profile.key_pair_types:
        a = rfc5280.AlgorithmIdentifier()
        a["algorithm"] = univ.ObjectIdentifier(kt.algorithm)
        if kt.parameter is not None:
            a["parameters"] = univ.Any(_asn1.encode(univ.ObjectIdentifier(kt.parameter)))
        v.append(a)
    return _asn1.encode(v)

