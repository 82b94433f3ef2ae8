"""OCSP responder logic (RFC 6960) for one CA, without HTTP.

``OcspResponder(engine, ca_name, responder=None).respond(request_der) -> OcspAnswer`` never
raises for bad input:

* unparsable request (or more than one CertID, or a nonce longer than 32 octets, RFC 8954)
  → ``malformedRequest``;
* a CertID naming another issuer than this CA → ``unauthorized``;
* otherwise ``successful`` with ``good``, ``revoked`` (time, and reason unless unspecified;
  certificateHold counts as revoked) or ``unknown`` (a serial this CA never issued), thisUpdate
  now, nextUpdate now + ``settings.ocsp_validity``, the request's nonce echoed, responder ID by
  key hash, signed in the token by the CA key or by a delegated responder (see
  :meth:`ca.engine.CaEngine.issue_ocsp_responder`; its certificate is included);
* the token unavailable → ``tryLater``; any other failure while signing → ``internalError``.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from client_sdk.cmp import RevocationReason
from hsm.errors import KeyNotFound, TokenUnavailable

from .engine import CaEngine, ResponderCredential
from .errors import InvalidCaMaterial, UnknownSerial
from .signer import signature_hash
from .types import SignatureKind, key_type_of

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES: Final = 16 * 1024
MAX_NONCE: Final = 32


@dataclass(frozen=True)
class OcspAnswer:
    """The DER response and what it says (for logs, metrics and HTTP caching headers)."""

    der: bytes
    response_status: ocsp.OCSPResponseStatus
    cert_status: ocsp.OCSPCertStatus | None = None
    serial: int | None = None
    this_update: dt.datetime | None = None
    next_update: dt.datetime | None = None


def _key_bits(public_key: object) -> bytes:
    """The subjectPublicKey BIT STRING contents (what issuerKeyHash hashes)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    if isinstance(public_key, rsa.RSAPublicKey):
        return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    raise TypeError("CA keys are RSA or EC keys")


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


class OcspResponder:
    """Answers OCSP requests about certificates of CA ``ca_name``. Thread-safe."""

    def __init__(self, engine: CaEngine, ca_name: str, *, responder: ResponderCredential | None = None) -> None:
        self._engine = engine
        ca = engine.get_ca(ca_name)  # CaNotFound
        self._ca_name = ca.name
        ca_cert = ca.certificate
        self._name_der = ca_cert.subject.public_bytes()
        self._key_bits = _key_bits(ca_cert.public_key())
        self._hashes: dict[str, tuple[bytes, bytes]] = {}
        self._responder_cert: x509.Certificate | None = None
        if responder is None:
            self._key = engine.signing_key(ca.name, SignatureKind.OCSP)
            self._sig_hash = signature_hash(ca.key_type)
            self._signer_cert = ca_cert
        else:
            cert = responder.certificate
            if responder.ca_name != ca.name:
                raise InvalidCaMaterial("the responder credential belongs to another CA")
            try:
                cert.verify_directly_issued_by(ca_cert)
                eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature, UnsupportedAlgorithm) as exc:
                raise InvalidCaMaterial(f"the responder certificate is not usable for this CA ({exc})") from None
            if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
                raise InvalidCaMaterial("the responder certificate lacks id-kp-OCSPSigning")
            kt = key_type_of(cert.public_key())
            if kt is None:
                raise InvalidCaMaterial("the responder key must be RSA or EC")
            self._key = engine.responder_key(responder)
            self._sig_hash = signature_hash(kt)
            self._signer_cert = cert
            self._responder_cert = cert

    @property
    def ca_name(self) -> str:
        return self._ca_name

    def _ca_signer(self) -> tuple[Any, Any]:
        ca = self._engine.get_ca(self._ca_name)
        return self._engine.signing_key(ca.name, SignatureKind.OCSP), signature_hash(ca.key_type)

    def _issuer_hashes(self, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
        cached = self._hashes.get(algorithm.name)
        if cached is None:
            cached = (_digest(algorithm, self._name_der), _digest(algorithm, self._key_bits))
            self._hashes[algorithm.name] = cached
        return cached

    def respond(self, request_der: bytes) -> OcspAnswer:
        """Answer one DER-encoded OCSPRequest (see the module docstring); never raises for bad
        input."""
        if not isinstance(request_der, (bytes, bytearray)) or not 0 < len(request_der) <= MAX_REQUEST_BYTES:
            return self._unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        try:
            req = ocsp.load_der_ocsp_request(bytes(request_der))
            algorithm = req.hash_algorithm
            name_hash, key_hash, serial = req.issuer_name_hash, req.issuer_key_hash, req.serial_number
            nonce: bytes | None = None
            for ext in req.extensions:
                if isinstance(ext.value, x509.OCSPNonce):
                    nonce = ext.value.nonce
        except (ValueError, UnsupportedAlgorithm, TypeError) as exc:
            log.debug("malformed OCSP request: %s", exc)
            return self._unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        if nonce is not None and not 0 < len(nonce) <= MAX_NONCE:
            return self._unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        if (name_hash, key_hash) != self._issuer_hashes(algorithm):
            return self._unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)

        try:
            record = self._engine.get_certificate(serial)
        except UnknownSerial:
            record = None
        now = self._engine.now()
        ca = self._engine.get_ca(self._ca_name)
        next_update = now + ca.settings.ocsp_validity
        revocation_time: dt.datetime | None = None
        reason: x509.ReasonFlags | None = None
        if record is None or record.ca_name != self._ca_name:
            status = ocsp.OCSPCertStatus.UNKNOWN
        elif record.revocation is not None:
            status = ocsp.OCSPCertStatus.REVOKED
            revocation_time = record.revocation.revoked_at
            if record.revocation.reason is not RevocationReason.UNSPECIFIED:
                reason = record.revocation.reason.to_x509()
        else:
            status = ocsp.OCSPCertStatus.GOOD
        base = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=name_hash, issuer_key_hash=key_hash, serial_number=serial, algorithm=algorithm,
            cert_status=status, this_update=now, next_update=next_update,
            revocation_time=revocation_time, revocation_reason=reason)
        if nonce is not None:
            base = base.add_extension(x509.OCSPNonce(nonce), critical=False)
        builder = base.responder_id(ocsp.OCSPResponderEncoding.HASH, self._signer_cert)
        if self._responder_cert is not None:
            builder = builder.certificates([self._responder_cert])
        try:
            try:
                response = builder.sign(self._key, self._sig_hash)
            except KeyNotFound:
                if self._responder_cert is None:
                    raise
                # The delegated responder's key is not (yet) found by this process: the CA key
                # answers instead, which every client accepts as well.
                log.warning("OCSP for %s: the delegated responder's key was not found; the CA key signs",
                            self._ca_name)
                ca_key, ca_hash = self._ca_signer()
                response = base.responder_id(ocsp.OCSPResponderEncoding.HASH, ca.certificate).sign(ca_key, ca_hash)
        except TokenUnavailable:
            log.warning("OCSP for %s: the token is unavailable, answering tryLater", self._ca_name)
            return self._unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
        except Exception:  # noqa: BLE001 - the responder must answer, never crash the caller
            log.exception("OCSP for %s: signing failed, answering internalError", self._ca_name)
            return self._unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)
        return OcspAnswer(der=response.public_bytes(serialization.Encoding.DER),
                          response_status=ocsp.OCSPResponseStatus.SUCCESSFUL, cert_status=status, serial=serial,
                          this_update=now, next_update=next_update)

    @staticmethod
    def _unsuccessful(status: ocsp.OCSPResponseStatus) -> OcspAnswer:
        resp = ocsp.OCSPResponseBuilder.build_unsuccessful(status)
        return OcspAnswer(der=resp.public_bytes(serialization.Encoding.DER), response_status=status)


__all__ = ["OcspAnswer", "OcspResponder"]
