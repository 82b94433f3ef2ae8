"""The real ``openssl cmp`` (3.0) client against the running service (Flask app behind a real
HTTP server on 127.0.0.1): every enrolment, update, revocation and general message, polling with
an operator's approval, implicit confirmation, rejecting certConf, and the refusals. Issued
certificates verify against the CA (openssl verify), pass pkilint, appear in the CA inventory,
and revocations show in the CRL."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca import CertificateQuery
from ca.cmp import TransactionState
from client_sdk import cmp
from client_sdk.cmp import InfoType
from sms.ca.wiring import crl_publisher
from tests.ca.conftest import openssl_verify, pkilint_findings
from tests.client_sdk.cmptools import OPENSSL, TestPki, ec_key, name

from .conftest import REF, SECRET, CmpEnv


def _key(env: CmpEnv, fname: str) -> Path:
    p = env.dir / fname
    p.write_bytes(ec_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    return p


def _txns(env: CmpEnv, profile: str = "test") -> list:
    return env.cmp.transactions.list(profile=profile)


def _assert_good_certificate(env: CmpEnv, cert: x509.Certificate, tmp: Path) -> None:
    r = openssl_verify(tmp, cert, (env.issuing.certificate, env.root.certificate), purpose="sslclient")
    assert r.returncode == 0, r.stdout + r.stderr
    assert pkilint_findings("cert", cert.public_bytes(serialization.Encoding.DER)) == []
    record = env.engine.get_certificate(cert.serial_number)
    assert record.ca_name == "issuing" and record.profile == "tls-mutual" and record.requester.startswith("cmp:test:")


def _revoked_in_crl(env: CmpEnv, cert: x509.Certificate, tmp: Path) -> None:
    crl = crl_publisher(env.svc).current("issuing").der
    assert x509.load_der_x509_crl(crl).get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    r = openssl_verify(tmp, cert, (env.issuing.certificate, env.root.certificate), crls=[
        crl, crl_publisher(env.svc).current("root").der])
    assert r.returncode != 0 and "certificate revoked" in r.stdout + r.stderr
    assert env.engine.get_certificate(cert.serial_number).revocation is not None


@pytest.fixture
def env(cmp_env: CmpEnv) -> CmpEnv:
    cmp_env.profile("test", default=True)
    for n in ("k1", "k2", "k3", "k4"):
        _key(cmp_env, n + ".key")
    return cmp_env


def test_ir_with_pbm_issues_a_valid_certificate_and_confirms(env: CmpEnv, tmp_path: Path) -> None:
    r = env.pbm("test", "-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-ir.example.com", "-sans", "nf.example",
                "-certout", "ir.pem", "-cacertsout", "capubs.pem")
    assert r.returncode == 0, r.stderr
    cert = env.cert("ir.pem")
    assert cert.issuer == env.issuing.certificate.subject and cert.subject == name("nf-ir.example.com")
    assert "nf.example" in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName)
    _assert_good_certificate(env, cert, tmp_path)
    assert env.cert("capubs.pem") == env.root.certificate
    (txn,) = _txns(env)
    assert txn.state is TransactionState.FINISHED and txn.certificate == cert
    assert env.engine.search(CertificateQuery(profile="tls-mutual"))[0].serial == cert.serial_number
    # the default profile answers at /.well-known/cmp too
    r = openssl_cmp_default(env, "-cmd", "ir", "-newkey", "k2.key", "-subject", "/CN=nf-default.example.com",
                            "-certout", "d.pem")
    assert r.returncode == 0, r.stderr


def openssl_cmp_default(env: CmpEnv, *args: str) -> subprocess.CompletedProcess[str]:
    from tests.client_sdk.cmptools import openssl_cmp

    return openssl_cmp("-server", env.hostport, "-path", ".well-known/cmp", "-ref", REF, "-secret",
                       "pass:" + SECRET, "-recipient", env.ca_dn, *args, cwd=env.dir)


def test_cr_kur_p10cr_rr_genm_with_signature_protection(env: CmpEnv, tmp_path: Path) -> None:
    assert env.pbm("test", "-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-client.example.com",
                   "-certout", "client.pem").returncode == 0
    r = env.sig("test", "client.pem", "k1.key", "-cmd", "cr", "-newkey", "k2.key", "-subject", "/CN=nf-cr.example.com",
                "-certout", "cr.pem")
    assert r.returncode == 0, r.stderr
    cr = env.cert("cr.pem")
    _assert_good_certificate(env, cr, tmp_path)
    r = env.sig("test", "cr.pem", "k2.key", "-cmd", "kur", "-newkey", "k3.key", "-certout", "kur.pem")
    assert r.returncode == 0, r.stderr
    kur = env.cert("kur.pem")
    assert kur.subject == cr.subject and kur.public_key() != cr.public_key()
    assert env.engine.get_certificate(kur.serial_number).renewal_of == cr.serial_number
    _assert_good_certificate(env, kur, tmp_path)
    csr = x509.CertificateSigningRequestBuilder().subject_name(name("nf-p10.example.com")).sign(ec_key(), hashes.SHA256())
    (env.dir / "p10.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    r = env.sig("test", "client.pem", "k1.key", "-cmd", "p10cr", "-csr", "p10.csr", "-certout", "p10.pem")
    assert r.returncode == 0, r.stderr
    _assert_good_certificate(env, env.cert("p10.pem"), tmp_path)
    r = env.sig("test", "kur.pem", "k3.key", "-cmd", "rr", "-oldcert", "kur.pem", "-revreason", "1")
    assert r.returncode == 0, r.stderr
    _revoked_in_crl(env, kur, tmp_path)
    r = env.sig("test", "client.pem", "k1.key", "-cmd", "genm", "-infotype", "caCerts")
    assert r.returncode == 0, r.stderr
    assert "GENP" in r.stdout
    kinds = [t.request_type.asn1_name for t in _txns(env)]
    assert sorted(kinds) == sorted(["ir", "cr", "kur", "p10cr", "rr", "genm"])
    # openssl 3.0 can ask for rootCaKeyUpdate (-infotype sends the OID with no value; it cannot send
    # RFC 9483's id-it-rootCaCert): csm has no root-key rollover, so the value is absent
    r = env.sig("test", "client.pem", "k1.key", "-cmd", "genm", "-infotype", "rootCaKeyUpdate", "-rspout", "genp.der")
    assert r.returncode == 0, r.stderr
    genp = cmp.PKIMessage.decode((env.dir / "genp.der").read_bytes())
    assert isinstance(genp.body, cmp.GenpBody)
    assert [(i.kind, i.value) for i in genp.body.items] == [(InfoType.ROOT_CA_KEY_UPDATE, None)]
    # the revoked certificate can no longer authenticate requests
    r = env.sig("test", "kur.pem", "k3.key", "-cmd", "cr", "-newkey", "k4.key", "-subject", "/CN=nf-x.example.com",
                "-certout", "x.pem", "-unprotected_errors")
    assert r.returncode == 1 and "certRevoked" in r.stderr, r.stderr
    assert not (env.dir / "x.pem").exists()


def test_implicit_confirm_skips_certconf(env: CmpEnv) -> None:
    r = env.pbm("test", "-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-imp.example.com", "-implicit_confirm",
                "-certout", "imp.pem")
    assert r.returncode == 0, r.stderr
    assert "CERTCONF" not in r.stdout
    (txn,) = _txns(env)
    assert txn.state is TransactionState.FINISHED and txn.implicit_confirm
    assert env.engine.get_certificate(env.cert("imp.pem").serial_number).revocation is None


def test_implicit_confirm_not_granted_when_the_profile_forbids_it(cmp_env: CmpEnv) -> None:
    cmp_env.profile("strict", implicit_confirm=False)
    _key(cmp_env, "k1.key")
    r = cmp_env.pbm("strict", "-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-strict.example.com", "-implicit_confirm",
                    "-certout", "s.pem")
    assert r.returncode == 0, r.stderr
    assert "sending CERTCONF" in r.stdout


def test_rejecting_certconf_revokes_the_certificate(env: CmpEnv, tmp_path: Path) -> None:
    other = TestPki(tmp_path / "..", "Other CA")
    (env.dir / "other-ca.crt").write_bytes((other.dir / "ca.crt").read_bytes())
    r = env.pbm("test", "-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-rej.example.com", "-out_trusted", "other-ca.crt",
                "-certout", "rej.pem")
    assert r.returncode != 0
    assert "rejecting newly enrolled cert" in r.stderr, r.stderr
    (txn,) = _txns(env)
    assert txn.state is TransactionState.FINISHED and "rejected" in txn.reason
    cert = txn.certificate
    assert cert is not None
    _revoked_in_crl(env, cert, tmp_path)


def test_polling_until_an_operator_approves_or_rejects(cmp_env: CmpEnv) -> None:
    env = cmp_env
    env.profile("held", approval_required=True, poll_interval=1)
    _key(env, "k1.key")
    token, _ = env.svc.auth.create_token(root=True, display_name="approver")
    hdrs = {"X-CSM-Token": token}
    client = env.client

    def start(subject: str, out: str) -> subprocess.Popen[str]:
        args = [OPENSSL, "cmp", "-config", "", "-server", env.hostport, "-path", ".well-known/cmp/p/held",
                "-ref", REF, "-secret", "pass:" + SECRET, "-recipient", env.ca_dn, "-cmd", "ir",
                "-newkey", "k1.key", "-subject", subject, "-certout", out, "-unprotected_errors",
                "-total_timeout", "60"]
        return subprocess.Popen(args, cwd=env.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_pending(subject: str) -> str:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            reqs = client.get("/v1/cmp/requests?profile=held", headers=hdrs).get_json()["requests"]
            for r in reqs:
                if r["subject"] == subject:
                    return str(r["transaction_id"])
            time.sleep(0.1)
        raise AssertionError("request never became pending")

    proc = start("/CN=nf-held.example.com", "held.pem")
    try:
        tid = wait_pending("CN=nf-held.example.com")
        time.sleep(1.2)  # let the client poll at least once
        assert client.post(f"/v1/cmp/requests/held/{tid}/approve", headers=hdrs).status_code == 200
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "sending POLLREQ" in out and "received POLLREP" in out
    assert env.cert("held.pem").subject == name("nf-held.example.com")
    again = client.post(f"/v1/cmp/requests/held/{tid}/approve", headers=hdrs)
    assert again.status_code == 409

    proc = start("/CN=nf-refused.example.com", "refused.pem")
    try:
        tid = wait_pending("CN=nf-refused.example.com")
        r = client.post(f"/v1/cmp/requests/held/{tid}/reject", json={"reason": "not in inventory"}, headers=hdrs)
        assert r.status_code == 200 and r.get_json()["state"] == "rejected"
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "notAuthorized" in out and "not in inventory" in out, out
    assert not (env.dir / "refused.pem").exists()


@pytest.mark.parametrize("case,failure", [
    ("wrong-mac", "badMessageCheck"),
    ("unknown-reference", "badMessageCheck"),
    ("unprotected", "badMessageCheck"),
    ("wrong-recipient", "wrongAuthority"),
    ("untrusted-signer", "signerNotTrusted"),
])
def test_refused_requests_get_the_right_failinfo(env: CmpEnv, tmp_path: Path, case: str, failure: str) -> None:
    base = ["-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-x.example.com", "-certout", "x.pem", "-unprotected_errors"]
    if case == "untrusted-signer":
        stranger = TestPki(tmp_path / "..", "Stranger CA")
        stranger.entity("strange", "stranger")
        for f in ("strange.key", "strange.crt"):
            (env.dir / f).write_bytes((stranger.dir / f).read_bytes())
        r = env.sig("test", "strange.crt", "strange.key", *base)
    else:
        secret = "a-wrong-secret" if case == "wrong-mac" else SECRET
        ref = "unknown-ref" if case == "unknown-reference" else REF
        recipient = "/CN=Some Other CA" if case == "wrong-recipient" else env.ca_dn
        extra = ["-unprotected_requests"] if case == "unprotected" else []
        r = env.run("test", "-ref", ref, "-secret", "pass:" + secret, "-recipient", recipient, *extra, *base)
    assert r.returncode == 1
    assert failure in r.stderr, r.stderr
    assert not (env.dir / "x.pem").exists()
    assert env.engine.search(CertificateQuery(ca_name="issuing")) == []
    assert SECRET not in str(env.svc.audit.entries())


def test_mac_protected_kur_is_refused(env: CmpEnv) -> None:
    assert env.pbm("test", "-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-k.example.com",
                   "-certout", "c.pem").returncode == 0
    r = env.pbm("test", "-cmd", "kur", "-oldcert", "c.pem", "-newkey", "k2.key", "-certout", "x.pem",
                "-unprotected_errors")
    assert r.returncode == 1 and "wrongIntegrity" in r.stderr, r.stderr
    assert len(env.engine.search(CertificateQuery(ca_name="issuing"))) == 1


def test_replayed_transaction_is_transaction_id_in_use(env: CmpEnv) -> None:
    r = env.pbm("test", "-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-once.example.com", "-certout", "a.pem",
                "-reqout", "ir.der,cc.der")
    assert r.returncode == 0, r.stderr
    r = env.pbm("test", "-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-once.example.com", "-certout", "b.pem",
                "-reqin", "ir.der", "-unprotected_errors")
    assert r.returncode == 1 and "transactionIdInUse" in r.stderr, r.stderr
    assert len(env.engine.search(CertificateQuery(ca_name="issuing"))) == 1


def test_wrong_signature_is_bad_message_check(env: CmpEnv) -> None:
    assert env.pbm("test", "-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf-s.example.com",
                   "-certout", "c.pem").returncode == 0
    # -rspin /dev/null: openssl writes the request and never contacts the server
    env.sig("test", "c.pem", "k1.key", "-cmd", "cr", "-newkey", "k2.key", "-subject", "/CN=nf-t.example.com",
            "-certout", "t.pem", "-reqout", "cr.der", "-rspin", "/dev/null")
    der = bytearray((env.dir / "cr.der").read_bytes())
    protection = cmp.PKIMessage.decode(bytes(der)).protection
    assert protection is not None
    i = bytes(der).rfind(protection)
    der[i + len(protection) - 1] ^= 1
    (env.dir / "bad.der").write_bytes(bytes(der))
    r = env.sig("test", "c.pem", "k1.key", "-cmd", "cr", "-newkey", "k2.key", "-subject", "/CN=nf-t.example.com",
                "-certout", "t.pem", "-reqin", "bad.der", "-unprotected_errors")
    assert r.returncode == 1 and "badMessageCheck" in r.stderr, r.stderr
    assert not (env.dir / "t.pem").exists()


def test_unconfirmed_certificate_is_revoked_by_the_sweeper(env: CmpEnv, tmp_path: Path) -> None:
    from sqlalchemy import update

    from sms.cmp.models import CmpTransactionRow
    from sms.db import transaction

    client = cmp.CmpClient(f"http://{env.hostport}/.well-known/cmp/p/test", recipient=env.issuing.certificate.subject,
                           secret=SECRET.encode(), reference=REF.encode(), pbm_iterations=500)
    key = ec_key()
    # send the ir by hand and never confirm
    req = cmp.builders.cert_request(key, subject=name("nf-silent.example.com"))
    msg = cmp.protect_with_pbm(cmp.PKIMessage(client._header(), cmp.IrBody((req,))), SECRET.encode(),
                               sender_kid=REF.encode(), iteration_count=500)
    rsp = cmp.PKIMessage.decode(client.transport.send(msg.encode()))
    cert = rsp.body.responses[0].certificate
    assert cert is not None and rsp.header.confirm_wait_time is not None
    (txn,) = _txns(env)
    assert txn.state is TransactionState.WAITING_CONFIRM
    assert env.cmp.sweep().revoked == 0  # not due yet
    with transaction(env.svc.sessions) as s:
        s.execute(update(CmpTransactionRow).values(confirm_deadline=time.time() - 1))
    assert env.cmp.sweep().revoked == 1
    (txn,) = _txns(env)
    assert txn.state is TransactionState.FINISHED and "not confirmed" in txn.reason
    _revoked_in_crl(env, cert, tmp_path)
