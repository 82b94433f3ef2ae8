"""OCSP responder (RFC 6960): the real `openssl ocsp` client, talking HTTP to a tiny server on
127.0.0.1, accepts good / revoked / unknown answers with its nonce, signed in the token by the
CA key or a delegated responder; pkilint accepts the responses; malformed requests and requests
about another CA get the right error status."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import ocsp

from ca import (
    CaEngine,
    CreateRootRequest,
    IssueRequest,
    OcspResponder,
    RevocationReason,
    RevokeRequest,
    SignatureKind,
)

from .conftest import install, make_csr, name, openssl, write_pem


class _Server:
    def __init__(self) -> None:
        self.responder: OcspResponder | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                assert outer.responder is not None
                der = outer.responder.respond(body).der
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(der)))
                self.end_headers()
                self.wfile.write(der)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"


@pytest.fixture
def ocsp_server() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def _request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = b"0123456789abcdef",
             algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    b = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("delegated", [False, True], ids=["ca-signed", "delegated-responder"])
def test_openssl_ocsp_client_accepts_good_revoked_and_unknown_answers_with_nonce(
        engine: CaEngine, root, sub, ocsp_server: _Server, tmp_path: Path, delegated: bool, lint) -> None:
    credential = engine.issue_ocsp_responder("sub") if delegated else None
    if credential is not None:
        cert = credential.certificate
        assert x509.OCSPNoCheck.oid in {e.oid for e in cert.extensions}
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
            [x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]
        assert lint("cert", credential.certificate_der) == []
    ocsp_server.responder = OcspResponder(engine, "sub", responder=credential)
    good = engine.issue(IssueRequest(ca="sub", profile="tls-client", csr=make_csr(name("good")), requester="t"))
    bad = engine.issue(IssueRequest(ca="sub", profile="tls-client", csr=make_csr(name("bad")), requester="t"))
    engine.revoke(RevokeRequest(serial=bad.record.serial, reason=RevocationReason.KEY_COMPROMISE))
    issuer = write_pem(tmp_path / "issuer.pem", sub.certificate)
    anchors = write_pem(tmp_path / "anchors.pem", root.certificate, sub.certificate)
    cases: list[tuple[str, str | Path, str]] = [("-cert", write_pem(tmp_path / "good.pem", good.certificate), "good"),
             ("-cert", write_pem(tmp_path / "bad.pem", bad.certificate), "revoked"),
             ("-serial", str((1 << 150) + 7), "unknown")]
    for opt, value, status in cases:
        out = openssl("ocsp", "-issuer", issuer, opt, value, "-url", ocsp_server.url, "-CAfile", anchors,
                      "-resp_text", "-respout", tmp_path / f"{status}.der")
        text = out.stdout + out.stderr
        assert out.returncode == 0, text
        assert "Response verify OK" in text, text
        assert f": {status}" in text, text
        assert "nonce" not in text.lower().replace("ocsp nonce", ""), text  # no nonce warning or error
        assert "OCSP Nonce" in text  # echoed in the response
        if status == "revoked":
            assert "Reason: keyCompromise" in text
        resp = ocsp.load_der_ocsp_response((tmp_path / f"{status}.der").read_bytes())
        assert resp.responder_key_hash is not None and resp.next_update_utc is not None
        assert lint("ocsp", (tmp_path / f"{status}.der").read_bytes()) == []
    counts = {(c.key_label, c.kind): c.count for c in engine.certificates.signature_counts("sub")}
    label = credential.key_label if credential else sub.key_label
    assert counts[(label, SignatureKind.OCSP)] == 3


def test_malformed_requests_get_malformed_request_and_other_cas_get_unauthorized(
        engine: CaEngine, root, sub) -> None:
    responder = OcspResponder(engine, "sub")
    for junk in (b"", b"\x00" * 10, b"garbage", b"\x30" * 20_000):
        answer = responder.respond(junk)
        assert answer.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        assert ocsp.load_der_ocsp_response(answer.der).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    leaf = engine.issue(IssueRequest(ca="sub", profile="tls-client", csr=make_csr(name("x")), requester="t"))
    too_long_nonce = responder.respond(_request(leaf.certificate, sub.certificate, nonce=b"n" * 33))
    assert too_long_nonce.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    # a certificate of the root, asked of the sub-CA's responder
    other = engine.issue(IssueRequest(ca="root", profile="tls-client", csr=make_csr(name("y")), requester="t"))
    answer = responder.respond(_request(other.certificate, root.certificate))
    assert answer.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED
    # a serial of another CA with this CA's issuer hashes: unknown, not good
    mine = ocsp.load_der_ocsp_request(_request(leaf.certificate, sub.certificate))
    forged = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        mine.issuer_name_hash, mine.issuer_key_hash, other.record.serial, hashes.SHA1()).build()
    answer = responder.respond(forged.public_bytes(serialization.Encoding.DER))
    assert answer.cert_status is ocsp.OCSPCertStatus.UNKNOWN
    # SHA-256 CertIDs and requests without a nonce work too
    answer = responder.respond(_request(leaf.certificate, sub.certificate, nonce=None, algorithm=hashes.SHA256()))
    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.cert_status is ocsp.OCSPCertStatus.GOOD
    resp = ocsp.load_der_ocsp_response(answer.der)
    assert resp.hash_algorithm.name == "sha256" and len(resp.extensions) == 0
    assert resp.serial_number == leaf.record.serial


def test_hold_is_answered_revoked_until_released(engine: CaEngine, root) -> None:
    install(engine, "root")
    leaf = engine.issue(IssueRequest(ca="root", profile="tls-client", csr=make_csr(name("held")), requester="t"))
    responder = OcspResponder(engine, "root")
    engine.revoke(RevokeRequest(serial=leaf.record.serial, reason=RevocationReason.CERTIFICATE_HOLD))
    resp = ocsp.load_der_ocsp_response(responder.respond(_request(leaf.certificate, root.certificate)).der)
    assert resp.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason is x509.ReasonFlags.certificate_hold
    engine.release_hold(leaf.record.serial)
    assert responder.respond(_request(leaf.certificate, root.certificate)).cert_status is ocsp.OCSPCertStatus.GOOD


def test_rsa_ca_signs_ocsp_responses_in_the_token(engine: CaEngine, tmp_path: Path, lint) -> None:
    from hsm import KeyType

    record = engine.create_root(CreateRootRequest(name="rsa", subject="CN=RSA OCSP Root", key_type=KeyType.RSA_2048))
    install(engine, "rsa")
    leaf = engine.issue(IssueRequest(ca="rsa", profile="tls-client", csr=make_csr(name("r")), requester="t"))
    answer = OcspResponder(engine, "rsa").respond(_request(leaf.certificate, record.certificate))
    resp = ocsp.load_der_ocsp_response(answer.der)
    public_key = record.certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey) and resp.signature_hash_algorithm is not None
    public_key.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), resp.signature_hash_algorithm)
    assert lint("ocsp", answer.der) == []


def test_a_delegated_responder_whose_key_is_gone_falls_back_to_the_ca_key(engine: CaEngine, root, sub,
                                                                        keystore) -> None:
    """The answer stays valid (signed by the CA key, no responder certificate), not internalError."""
    from cryptography.hazmat.primitives.asymmetric import ec

    credential = engine.issue_ocsp_responder("sub")
    responder = OcspResponder(engine, "sub", responder=credential)
    leaf = engine.issue(IssueRequest(ca="sub", profile="tls-client", csr=make_csr(name("f")), requester="t"))
    keystore.destroy(credential.key_label)  # as another process may not (yet) find it
    answer = responder.respond(_request(leaf.certificate, sub.certificate))
    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.cert_status is ocsp.OCSPCertStatus.GOOD
    resp = ocsp.load_der_ocsp_response(answer.der)
    assert resp.certificates == []
    ca_cert = sub.certificate
    assert resp.responder_key_hash == ca_cert.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value.digest
    pub = ca_cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(resp.signature_hash_algorithm))
