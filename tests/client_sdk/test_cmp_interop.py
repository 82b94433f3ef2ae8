"""Interop: unmodified ``openssl cmp`` accepts responses made by our builders; our CmpClient runs
every flow against that responder and against openssl's own mock server."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from client_sdk import cmp
from client_sdk.cmp import builders, errors

from .cmptools import TestPki, cmp_http_server, ec_key, name, openssl_cmp, rsa_key
from .responder import MiniResponder

SECRET = b"interop-secret"


@pytest.fixture
def env(tmp_path: Path) -> tuple[TestPki, MiniResponder]:
    pki = TestPki(tmp_path, "Interop CA")
    sk, sc = pki.entity("srv", "Interop CMP Server")
    pki.entity("cl", "client1")
    pki.write_key("new.key", ec_key())
    return pki, MiniResponder(pki, SECRET, sk, sc)


def _load(p: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(p.read_bytes())


def test_openssl_ir_with_pbm_accepts_our_ip_and_pkiconf(env: Any) -> None:
    pki, app = env
    with cmp_http_server(app) as srv:
        r = openssl_cmp("-cmd", "ir", "-server", srv.hostport, "-path", "pkix/", "-ref", "client-ref",
                        "-secret", "pass:" + SECRET.decode(), "-recipient", "/CN=Interop CA", "-newkey", "new.key",
                        "-subject", "/CN=nf-ir", "-certout", "out.pem", "-cacertsout", "capubs.pem", cwd=pki.dir)
    assert r.returncode == 0, r.stderr
    cert = _load(pki.dir / "out.pem")
    assert cert.subject == name("nf-ir") and cert in app.issued
    assert _load(pki.dir / "capubs.pem") == pki.ca_cert
    kinds = [cmp.PKIMessage.decode(m).body_type.asn1_name for m in srv.requests]
    assert kinds == ["ir", "certConf"] and len(app.confirmed) == 1


def test_openssl_cr_kur_p10cr_rr_genm_with_signatures(env: Any) -> None:
    pki, app = env
    csr = x509.CertificateSigningRequestBuilder().subject_name(name("nf-p10")).sign(ec_key(), hashes.SHA256())
    from cryptography.hazmat.primitives import serialization
    (pki.dir / "p10.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    with cmp_http_server(app) as srv:
        def c(*args: str) -> subprocess.CompletedProcess[str]:
            return openssl_cmp("-server", srv.hostport, "-path", "pkix/", "-trusted", "ca.crt",
                               "-recipient", "/CN=Interop CA", *args, cwd=pki.dir)
        r = c("-cert", "cl.crt", "-key", "cl.key", "-cmd", "cr", "-newkey", "new.key", "-subject", "/CN=nf-cr",
              "-certout", "cr.pem")
        assert r.returncode == 0, r.stderr
        r = c("-cert", "cr.pem", "-key", "new.key", "-cmd", "kur", "-newkey", "new.key", "-certout", "kur.pem")
        assert r.returncode == 0, r.stderr
        assert _load(pki.dir / "kur.pem").subject == name("nf-cr")
        r = c("-cert", "cl.crt", "-key", "cl.key", "-cmd", "p10cr", "-csr", "p10.csr", "-certout", "p10.pem")
        assert r.returncode == 0, r.stderr
        r = c("-cert", "cl.crt", "-key", "cl.key", "-cmd", "rr", "-oldcert", "kur.pem", "-revreason", "4")
        assert r.returncode == 0, r.stderr
        assert app.revoked == [_load(pki.dir / "kur.pem").serial_number]
        r = c("-cert", "cl.crt", "-key", "cl.key", "-cmd", "genm")
        assert r.returncode == 0, r.stderr
        r = c("-cert", "cl.crt", "-key", "cl.key", "-cmd", "cr", "-newkey", "new.key", "-subject", "/CN=nf-imp",
              "-implicit_confirm", "-certout", "imp.pem")
        assert r.returncode == 0, r.stderr
    kinds = [cmp.PKIMessage.decode(m).body_type.asn1_name for m in srv.requests]
    assert kinds == ["cr", "certConf", "kur", "certConf", "p10cr", "certConf", "rr", "genm", "cr"]


def test_openssl_rejects_our_response_when_the_secret_differs(env: Any) -> None:
    pki, app = env
    with cmp_http_server(dataclasses.replace(app, secret=b"other")) as srv:
        r = openssl_cmp("-cmd", "ir", "-server", srv.hostport, "-ref", "x", "-secret", "pass:" + SECRET.decode(),
                        "-recipient", "/CN=Interop CA", "-newkey", "new.key", "-subject", "/CN=nf",
                        "-certout", "out.pem", cwd=pki.dir)
    assert r.returncode != 0
    assert not (pki.dir / "out.pem").exists()


def _pbm_client(url: str, pki: TestPki, **kw: Any) -> cmp.CmpClient:
    return cmp.CmpClient(url, recipient=pki.ca_name, secret=kw.pop("secret", SECRET), reference=b"client-ref", **kw)


def test_cmp_client_flows_against_builder_responder(env: Any) -> None:
    pki, app = env
    ck, cc = rsa_key(), None
    with cmp_http_server(app) as srv:
        c = _pbm_client(srv.url, pki)
        e = c.ir(ck, subject=name("nf-1"))
        assert e.certificate.subject == name("nf-1") and e.ca_pubs == (pki.ca_cert,) and not e.implicitly_confirmed
        cc = e.certificate
        sc = cmp.CmpClient(srv.url, recipient=pki.ca_name, key=ck, cert=cc, trusted=[pki.ca_cert])
        k2 = ec_key()
        e2 = sc.cr(k2, subject=name("nf-2"))
        e3 = sc.kur(ec_key(), old_cert=e2.certificate, old_key=k2)
        assert e3.certificate.subject == name("nf-2")
        csr = x509.CertificateSigningRequestBuilder().subject_name(name("nf-p10")).sign(ec_key(), hashes.SHA256())
        assert sc.p10cr(csr).certificate.subject == name("nf-p10")
        sc.revoke(e3.certificate, cmp.RevocationReason.SUPERSEDED)
        assert app.revoked == [e3.certificate.serial_number]
        assert sc.ca_certs() == (pki.ca_cert,)
        imp = _pbm_client(srv.url, pki, implicit_confirm=True).ir(ec_key(), subject=name("nf-imp"))
        assert imp.implicitly_confirmed
        pinned = cmp.CmpClient(srv.url, recipient=pki.ca_name, key=ck, cert=cc, server_cert=app.server_cert)
        assert pinned.cr(ec_key(), subject=name("nf-pin")).certificate.subject == name("nf-pin")
    kinds = [cmp.PKIMessage.decode(m).body_type.asn1_name for m in srv.requests]
    assert kinds.count("certConf") == 5 and "kur" in kinds


def test_cmp_client_polls_held_requests(env: Any) -> None:
    pki, app = env
    app.hold_polls = 3
    slept: list[float] = []
    with cmp_http_server(app) as srv:
        e = _pbm_client(srv.url, pki, sleep=slept.append).ir(ec_key(), subject=name("nf-held"))
    assert e.certificate.subject == name("nf-held")
    kinds = [cmp.PKIMessage.decode(m).body_type.asn1_name for m in srv.requests]
    assert kinds == ["ir", "pollReq", "pollReq", "pollReq", "certConf"]
    assert slept == [1, 1]


def test_cmp_client_refuses_wrong_mac_and_wrong_trust(env: Any) -> None:
    pki, app = env
    with cmp_http_server(dataclasses.replace(app, secret=b"server-side")) as srv:
        with pytest.raises(errors.BadMessageCheck):
            _pbm_client(srv.url, pki).ir(ec_key(), subject=name("x"))
    other = TestPki(pki.dir / "..", "Other CA")
    k, c = pki.entity("cl2", "client2")
    with cmp_http_server(app) as srv:
        with pytest.raises(errors.SignerNotTrusted):
            cmp.CmpClient(srv.url, recipient=pki.ca_name, key=k, cert=c, trusted=[other.ca_cert]).cr(
                ec_key(), subject=name("x"))


class _Tamper:
    """In-process transport that alters the responder's answer and re-protects it with the secret."""

    def __init__(self, app: MiniResponder, change: dict[str, Any]) -> None:
        self.app, self.change = app, change

    def send(self, request: bytes) -> bytes:
        rsp = cmp.PKIMessage.decode(self.app(request))
        hdr = dataclasses.replace(rsp.header, **self.change)
        return cmp.protect_with_pbm(rsp.replace(header=hdr), self.app.secret).encode()


@pytest.mark.parametrize("change,exc", [({"recip_nonce": b"x" * 16}, errors.BadRecipientNonce),
                                        ({"transaction_id": b"t" * 16}, errors.BadDataFormat)])
def test_cmp_client_checks_nonce_and_transaction_echo(env: Any, change: dict[str, Any], exc: type) -> None:
    pki, app = env
    c = cmp.CmpClient(_Tamper(app, change), recipient=pki.ca_name, secret=SECRET, reference=b"r")
    with pytest.raises(exc):
        c.ir(ec_key(), subject=name("x"))


def test_cmp_client_refuses_unprotected_responses(env: Any) -> None:
    pki, app = env

    class Unprotected:
        def send(self, request: bytes) -> bytes:
            rsp = cmp.PKIMessage.decode(app(request))
            return rsp.replace(header=dataclasses.replace(rsp.header, protection_alg=None), protection=None).encode()

    with pytest.raises(errors.BadMessageCheck, match="not protected"):
        cmp.CmpClient(Unprotected(), recipient=pki.ca_name, secret=SECRET).ir(ec_key(), subject=name("x"))


def test_server_error_becomes_typed_exception(env: Any) -> None:
    pki, app = env

    class Refuse:
        def send(self, request: bytes) -> bytes:
            req = cmp.PKIMessage.decode(request)
            rsp = builders.error_message_for(req, errors.NotAuthorized("profile forbids nf-x"), sender=pki.ca_name)
            return cmp.protect_with_pbm(rsp, SECRET).encode()

    with pytest.raises(errors.NotAuthorized, match="profile forbids"):
        cmp.CmpClient(Refuse(), recipient=pki.ca_name, secret=SECRET).ir(ec_key(), subject=name("x"))


_NETNS_SCRIPT = textwrap.dedent("""
    import subprocess, sys, time, socket
    from pathlib import Path
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from client_sdk import cmp
    d = Path(sys.argv[1])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    srv = subprocess.Popen(["openssl", "cmp", "-config", "", "-port", "1700", "-srv_ref", "mock-srv",
                            "-srv_secret", "pass:s3cr3t", "-rsp_cert", "new.crt", "-rsp_capubs", "ca.crt",
                            "-max_msgs", "6"], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", 1700), timeout=0.2).close(); break
            except OSError:
                time.sleep(0.05)
        key = serialization.load_pem_private_key((d / "new.key").read_bytes(), None)
        ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
        c = cmp.CmpClient("http://127.0.0.1:1700/pkix/", recipient=x509.Name.from_rfc4514_string("CN=Mock CA"),
                          secret=b"s3cr3t", reference=b"client-ref", pbm_iterations=500)
        e = c.ir(key, subject=x509.Name.from_rfc4514_string("CN=client2"))
        assert e.ca_pubs == (ca,)
        assert c.revoke(e.certificate) is None
        print("OK", e.certificate.subject.rfc4514_string())
    finally:
        srv.kill(); srv.wait()
""")


def test_cmp_client_against_openssl_mock_server_in_private_netns(tmp_path: Path) -> None:
    """``openssl cmp -port`` binds [::] only, so it runs inside ``unshare -n`` (loopback only)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None or \
            subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a private network namespace here")
    pki = TestPki(tmp_path, "Mock CA")
    k = ec_key()
    pki.write_key("new.key", k)
    pki.write_cert("new.crt", pki.issue(name("client2"), k.public_key()))
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", _NETNS_SCRIPT, str(tmp_path)], cwd=root,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK CN=client2" in r.stdout
