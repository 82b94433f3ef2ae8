"""CmpServer driven by the real ``openssl cmp`` client through a tiny HTTP server on 127.0.0.1."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca.cmp import CmpProfileConfig, CmpServer, ResponseSigner, TransactionState
from client_sdk import cmp
from tests.client_sdk.cmptools import TestPki, cmp_http_server, ec_key, name, openssl_cmp

from .doubles import MemoryIssuer, MemoryTransactions

SECRET = "pbm-secret-1"


@dataclass
class Env:
    pki: TestPki
    issuer: MemoryIssuer
    store: MemoryTransactions
    server: CmpServer
    hostport: str
    requests: list[bytes]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return openssl_cmp("-server", self.hostport, "-path", "pkix/test", *args, cwd=self.pki.dir)

    def sig(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("-trusted", "ca.crt", "-recipient", "/CN=Test CA", *args)

    def pbm(self, *args: str, secret: str = SECRET, ref: str = "nf-ref") -> subprocess.CompletedProcess[str]:
        return self.run("-ref", ref, "-secret", "pass:" + secret, "-recipient", "/CN=Test CA", *args)

    def cert(self, fname: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.pki.dir / fname).read_bytes())


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    pki = TestPki(tmp_path, "Test CA")
    sk, sc = pki.entity("cmpsrv", "Test CMP Server")
    pki.entity("cl", "client1")
    for n in ("k1", "k2", "k3"):
        pki.write_key(n + ".key", ec_key())
    issuer = MemoryIssuer(pki)
    store = MemoryTransactions()
    profile = CmpProfileConfig(name="test", ca_name=pki.ca_name, shared_secrets={b"nf-ref": SECRET.encode()},
                               trust_anchors=(pki.ca_cert,))
    server = CmpServer(profile, issuer=issuer, transactions=store, signer=ResponseSigner(sk, sc, (pki.ca_cert,)))
    with cmp_http_server(server.handle) as srv:
        yield Env(pki, issuer, store, server, srv.hostport, srv.requests)


def _kinds(env: Env) -> list[str]:
    return [cmp.PKIMessage.decode(m).body_type.asn1_name for m in env.requests]


def test_ir_with_pbm_enrolls_and_confirms(env: Env) -> None:
    r = env.pbm("-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-ir", "-sans", "nf.example",
                "-certout", "ir.pem", "-cacertsout", "capubs.pem")
    assert r.returncode == 0, r.stderr
    cert = env.cert("ir.pem")
    assert cert.subject == name("nf-ir")
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["nf.example"]
    assert env.cert("capubs.pem") == env.pki.ca_cert
    assert _kinds(env) == ["ir", "certConf"]
    assert env.store.only().state is TransactionState.FINISHED
    assert env.issuer.requests[0].requester.sender_kid == b"nf-ref"


def test_cr_kur_p10cr_rr_genm_with_signatures(env: Env) -> None:
    r = env.sig("-cert", "cl.crt", "-key", "cl.key", "-cmd", "cr", "-newkey", "k1.key", "-subject", "/CN=nf-cr",
                "-certout", "cr.pem")
    assert r.returncode == 0, r.stderr
    r = env.sig("-cert", "cr.pem", "-key", "k1.key", "-cmd", "kur", "-newkey", "k2.key", "-certout", "kur.pem")
    assert r.returncode == 0, r.stderr
    kur = env.cert("kur.pem")
    assert kur.subject == name("nf-cr") and env.issuer.requests[-1].old_certificate == env.cert("cr.pem")
    csr = x509.CertificateSigningRequestBuilder().subject_name(name("nf-p10")).sign(ec_key(), hashes.SHA256())
    (env.pki.dir / "p10.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    r = env.sig("-cert", "cl.crt", "-key", "cl.key", "-cmd", "p10cr", "-csr", "p10.csr", "-certout", "p10.pem")
    assert r.returncode == 0, r.stderr
    assert env.cert("p10.pem").subject == name("nf-p10")
    r = env.sig("-cert", "kur.pem", "-key", "k2.key", "-cmd", "rr", "-oldcert", "kur.pem", "-revreason", "1")
    assert r.returncode == 0, r.stderr
    assert env.issuer.revoked == {kur.serial_number: cmp.RevocationReason.KEY_COMPROMISE}
    r = env.sig("-cert", "cl.crt", "-key", "cl.key", "-cmd", "genm")
    assert r.returncode == 0, r.stderr
    assert _kinds(env) == ["cr", "certConf", "kur", "certConf", "p10cr", "certConf", "rr", "genm"]


def test_implicit_confirm_skips_certconf(env: Env) -> None:
    r = env.pbm("-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-imp", "-implicit_confirm",
                "-certout", "imp.pem")
    assert r.returncode == 0, r.stderr
    assert _kinds(env) == ["ir"]
    assert env.store.only().state is TransactionState.FINISHED


def test_rejecting_certconf_revokes_the_certificate(env: Env) -> None:
    other = TestPki(env.pki.dir / "..", "Other CA")
    other.write_cert("other.crt", other.ca_cert)
    import shutil
    shutil.copy(other.dir / "ca.crt", env.pki.dir / "other-ca.crt")
    r = env.pbm("-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-rej", "-out_trusted", "other-ca.crt",
                "-certout", "rej.pem")
    assert r.returncode != 0
    assert "rejecting newly enrolled cert with subject: /CN=nf-rej" in r.stderr, r.stderr
    assert _kinds(env) == ["ir", "certConf"]
    (serial,) = env.issuer.issued
    assert serial in env.issuer.revoked
    assert env.store.only().state is TransactionState.FINISHED


@pytest.mark.parametrize("args,failure", [
    (("pbm", "-secret-override", "wrong"), "badMessageCheck"),
    (("pbm", "-ref-override", "unknown-ref"), "badMessageCheck"),
    (("pbm", "-unprotected_requests"), "badMessageCheck"),
    (("pbm", "-recipient-override", "/CN=Some Other CA"), "wrongAuthority"),
    (("sig-untrusted",), "signerNotTrusted"),
])
def test_refused_requests_get_the_right_failinfo(env: Env, args: tuple[str, ...], failure: str) -> None:
    base = ["-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-x", "-certout", "x.pem", "-unprotected_errors"]
    if args[0] == "sig-untrusted":
        stranger = TestPki(env.pki.dir / "..", "Stranger CA")
        k, c = stranger.entity("strange", "stranger")
        import shutil
        for f in ("strange.key", "strange.crt"):
            shutil.copy(stranger.dir / f, env.pki.dir / f)
        r = env.sig("-cert", "strange.crt", "-key", "strange.key", *base)
    else:
        secret, ref, recipient, extra = SECRET, "nf-ref", "/CN=Test CA", []
        if args[1] == "-secret-override":
            secret = args[2]
        elif args[1] == "-ref-override":
            ref = args[2]
        elif args[1] == "-recipient-override":
            recipient = args[2]
        else:
            extra.append(args[1])
        r = env.run("-ref", ref, "-secret", "pass:" + secret, "-recipient", recipient, *extra, *base)
    assert r.returncode == 1
    assert failure in r.stderr, r.stderr
    assert not (env.pki.dir / "x.pem").exists()
    assert env.issuer.requests == []


def test_mac_protected_kur_is_refused(env: Env) -> None:
    r = env.pbm("-cmd", "kur", "-oldcert", "cl.crt", "-newkey", "k1.key", "-certout", "x.pem", "-unprotected_errors")
    assert r.returncode == 1
    assert "wrongIntegrity" in r.stderr, r.stderr
    assert env.issuer.requests == []


def test_replayed_transaction_is_transaction_id_in_use(env: Env) -> None:
    r = env.pbm("-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-once", "-certout", "a.pem",
                "-reqout", "ir.der,cc.der")
    assert r.returncode == 0, r.stderr
    r = env.pbm("-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-once", "-certout", "b.pem",
                "-reqin", "ir.der")
    assert r.returncode == 1
    assert "transactionIdInUse" in r.stderr, r.stderr
    assert len(env.issuer.requests) == 1


def test_wrong_signature_is_bad_message_check(env: Env) -> None:
    r = env.sig("-cert", "cl.crt", "-key", "cl.key", "-cmd", "cr", "-newkey", "k1.key", "-subject", "/CN=nf-t",
                "-certout", "t.pem", "-reqout", "cr.der", "-rspin", "/dev/null")
    # -rspin makes openssl skip the server; now replay the request with one bit of the signature flipped
    der = bytearray((env.pki.dir / "cr.der").read_bytes())
    msg = cmp.PKIMessage.decode(bytes(der))
    assert msg.protection is not None
    i = bytes(der).rfind(msg.protection)
    der[i + len(msg.protection) - 1] ^= 1
    (env.pki.dir / "bad.der").write_bytes(bytes(der))
    r = env.sig("-cert", "cl.crt", "-key", "cl.key", "-cmd", "cr", "-newkey", "k1.key", "-subject", "/CN=nf-t",
                "-certout", "t.pem", "-reqin", "bad.der")
    assert r.returncode == 1
    assert "badMessageCheck" in r.stderr, r.stderr
    assert env.issuer.requests == []
