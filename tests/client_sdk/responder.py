"""A deliberately minimal CMP responder built only from client_sdk.cmp's server-side builders.

It exists to prove that real clients (openssl cmp, CmpClient) accept what the builders produce;
the real server logic lives in ca.cmp. It answers PBM-protected requests with PBM and signed
requests with a signature by ``server_key``/``server_cert``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from cryptography import x509

from client_sdk import cmp
from client_sdk.cmp import builders, errors
from client_sdk.cmp.enums import BodyType, InfoType

from .cmptools import TestPki


@dataclasses.dataclass
class MiniResponder:
    pki: TestPki
    secret: bytes
    server_key: Any
    server_cert: x509.Certificate
    grant_implicit: bool = True
    hold_polls: int = 0  # answer "waiting" this many times before issuing
    issued: list[x509.Certificate] = dataclasses.field(default_factory=list)
    revoked: list[int] = dataclasses.field(default_factory=list)
    confirmed: list[bytes] = dataclasses.field(default_factory=list)
    _held: dict[bytes, tuple[BodyType, int, x509.Certificate, int]] = dataclasses.field(default_factory=dict)

    def __call__(self, der: bytes) -> bytes:
        try:
            req = cmp.PKIMessage.decode(der)
        except errors.CmpError as exc:
            hdr = cmp.decode_header_lenient(der)
            if hdr is None:
                hdr = builders.request_header()
            return builders.error_message_for(hdr, exc, sender=self.pki.ca_name).encode()
        try:
            self._authenticate(req)
            body = self._handle(req)
        except errors.CmpError as exc:
            body = builders.error_body(exc)
        implicit = req.header.implicit_confirm and self.grant_implicit and isinstance(
            body, cmp.CertRepMessageBody) and body.responses[0].certificate is not None
        rsp = builders.response_to(req, body, sender=self.pki.ca_name, implicit_confirm=implicit)
        if cmp.protection_kind(req) is cmp.ProtectionKind.MAC:
            rsp = cmp.protect_with_pbm(rsp, self.secret, sender_kid=b"mini-srv", iteration_count=500)
        else:
            rsp = cmp.protect_with_signature(rsp, self.server_key, cert=self.server_cert, chain=(self.pki.ca_cert,))
        return rsp.encode()

    def _authenticate(self, req: cmp.PKIMessage) -> None:
        kind = cmp.protection_kind(req)
        if kind is cmp.ProtectionKind.MAC:
            cmp.verify_pbm(req, self.secret)
        elif kind is cmp.ProtectionKind.SIGNATURE:
            signer = cmp.protection_certificate(req)
            if signer is None:
                raise errors.SignerNotTrusted("no signer certificate")
            cmp.verify_chain(signer, trust_anchors=[self.pki.ca_cert], untrusted=req.extra_certs)
            cmp.verify_signature(req, signer)
        else:
            raise errors.BadMessageCheck("unprotected request")

    def _handle(self, req: cmp.PKIMessage) -> cmp.Body:
        body = req.body
        if isinstance(body, cmp.CertReqMessagesBody):
            r = body.requests[0]
            cmp.verify_pop(r)
            assert r.template.public_key is not None
            subject = r.template.subject or (cmp.protection_certificate(req) or self.server_cert).subject
            return self._issue(req, body.body_type, r.cert_req_id, subject, r.template.public_key)
        if isinstance(body, cmp.P10crBody):
            if not body.csr.is_signature_valid:
                raise errors.BadPOP("CSR signature")
            return self._issue(req, BodyType.P10CR, 0, body.csr.subject, body.csr.public_key())
        if isinstance(body, cmp.PollReqBody):
            tid = req.header.transaction_id or b""
            btype, rid, cert, left = self._held[tid]
            if left > 0:
                self._held[tid] = (btype, rid, cert, left - 1)
                return builders.poll_rep_body(rid, 1, "still held")
            return builders.cert_rep_body(btype, [builders.granted(rid, cert)], ca_pubs=[self.pki.ca_cert])
        if isinstance(body, cmp.CertConfBody):
            self.confirmed.extend(s.cert_hash for s in body.statuses)
            return builders.pkiconf_body()
        if isinstance(body, cmp.RrBody):
            self.revoked.extend(d.serial_number or 0 for d in body.requests)
            return builders.rp_body([cmp.PKIStatusInfo.accepted()])
        if isinstance(body, cmp.GenmBody):
            return builders.genp_body([cmp.InfoTypeAndValue.certificates(InfoType.CA_CERTS, [self.pki.ca_cert])])
        raise errors.BadRequest(f"{body.body_type.asn1_name} not handled")

    def _issue(self, req: cmp.PKIMessage, btype: BodyType, rid: int, subject: x509.Name, key: Any) -> cmp.Body:
        cert = self.pki.issue(subject, key)
        self.issued.append(cert)
        if self.hold_polls:
            self._held[req.header.transaction_id or b""] = (btype, rid, cert, self.hold_polls - 1)
            return builders.cert_rep_body(btype, [builders.waiting(rid, "held")])
        return builders.cert_rep_body(btype, [builders.granted(rid, cert)], ca_pubs=[self.pki.ca_cert])
