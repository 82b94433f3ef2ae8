"""The CA REST API against the app (Flask test client) on SQLite and PostgreSQL, with the real
token, openssl and pkilint: CAs, downloads, profiles, signing in every format, inventory,
revocation, CRL, OCSP, reports, usage, authorisation and audit."""
from __future__ import annotations

import base64
import csv
import datetime as dt
import io
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509 import ocsp

from hsm import KeyType
from tests.ca.conftest import leaf_key, make_csr, name, openssl, openssl_verify, pkilint_findings, write_pem

from .helpers import create_intermediate, create_root, load_chain


@pytest.fixture
def cas(client: Any, root_headers: dict[str, str], unique: str) -> tuple[str, str]:
    root, sub = f"root-{unique}", f"sub-{unique}"
    create_root(client, root_headers, root)
    create_intermediate(client, root_headers, sub, root)
    return root, sub


def sign(client: Any, headers: dict[str, str], ca: str, csr: bytes, profile: str = "tls-server",
         **kw: Any) -> Any:
    return client.post(f"/v1/ca/{ca}/sign?profile={profile}", data=csr, headers={
        **headers, "Content-Type": "application/pkcs10", **kw.pop("extra_headers", {})}, **kw)


def anchor(client: Any, ca: str) -> list[x509.Certificate]:
    return load_chain(client.get(f"/v1/ca/{ca}/chain.pem").data)


def test_ca_lifecycle_list_read_and_public_downloads(client: Any, root_headers: dict[str, str],
                                                     cas: tuple[str, str], tmp_path: Path) -> None:
    root, sub = cas
    listed = client.get("/v1/ca", headers=root_headers).get_json()["cas"]
    assert {root, sub} <= {c["name"] for c in listed}
    info = client.get(f"/v1/ca/{sub}", headers=root_headers).get_json()
    assert info["parent"] == root and info["root"] is False and info["key_type"] == "ec-p256"
    assert info["urls"]["crl_url"].endswith(f"/v1/ca/{sub}/crl.der")

    pem = client.get(f"/v1/ca/{sub}/ca.pem")  # no token needed
    assert pem.status_code == 200
    cert = x509.load_pem_x509_certificate(pem.data)
    assert x509.load_der_x509_certificate(client.get(f"/v1/ca/{sub}/ca.der").data) == cert
    chain = load_chain(client.get(f"/v1/ca/{sub}/chain.pem").data)
    assert chain[0] == cert and chain[-1].subject == chain[-1].issuer and len(chain) == 2
    assert set(pkcs7.load_der_pkcs7_certificates(client.get(f"/v1/ca/{sub}/chain.p7b").data)) == set(chain)
    assert pkcs7.load_der_pkcs7_certificates(client.get(f"/v1/ca/{sub}/ca.p7b").data) == [cert]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and ku.digital_signature
    proc = openssl_verify(tmp_path, cert, chain[1:])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    again = client.post("/v1/ca", json={"name": root, "subject": "CN=x"}, headers=root_headers)
    assert again.status_code == 409 and again.mimetype == "application/problem+json"
    assert client.get("/v1/ca/nope/ca.pem").status_code == 404
    assert client.get("/v1/ca", headers={}).status_code == 401


@pytest.mark.parametrize("key_type", ["ec-p384", "rsa-2048"])
def test_root_key_types(client: Any, root_headers: dict[str, str], unique: str, key_type: str,
                        tmp_path: Path) -> None:
    ca = f"k-{unique}"
    create_root(client, root_headers, ca, key_type=key_type, builtin_profiles=True)
    r = sign(client, root_headers, ca, make_csr(name("k.example.com"), dns=["k.example.com"]))
    assert r.status_code == 201, r.get_data(as_text=True)
    leaf = load_chain(r.data)[0]
    assert openssl_verify(tmp_path, leaf, anchor(client, ca)).returncode == 0
    assert pkilint_findings("cert", leaf.public_bytes(serialization.Encoding.DER)) == []


def test_import_ca_key_becomes_a_token_object(client: Any, root_headers: dict[str, str], unique: str,
                                              services: Any, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subj = name(f"Imported {unique}", O="csm test")
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subj).issuer_name(subj).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    password = "import-pass-" + unique
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(password.encode())).decode()
    body = {"type": "import", "name": f"imp-{unique}", "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "private_key": key_pem}
    wrong = client.post("/v1/ca", json={**body, "password": "wrong-password"}, headers=root_headers)
    assert wrong.status_code == 400 and password not in wrong.get_data(as_text=True)
    r = client.post("/v1/ca", json={**body, "password": password}, headers=root_headers)
    assert r.status_code == 201, r.get_data(as_text=True)
    info = r.get_json()
    assert info["imported"] is True
    kinfo = services.keystore.get().get(info["key_label"])
    assert not kinfo.extractable and kinfo.sensitive
    issued = sign(client, root_headers, f"imp-{unique}", make_csr(name("i.example.com"), dns=["i.example.com"]))
    assert issued.status_code == 201
    assert openssl_verify(tmp_path, load_chain(issued.data)[0], [cert]).returncode == 0


def test_sign_formats_and_every_builtin_profile_passes_openssl_and_pkilint(
        client: Any, root_headers: dict[str, str], cas: tuple[str, str], tmp_path: Path) -> None:
    _root, sub = cas
    chain = anchor(client, sub)
    csrs = {
        "tls-server": make_csr(name("svc.example.com"), dns=["svc.example.com"], ips=["10.1.2.3"]),
        "tls-client": make_csr(name("client-1", O="csm"), sans=[x509.UniformResourceIdentifier("https://client-1.example.com/id")]),
        "tls-mutual": make_csr(name("mutual.example.com"), dns=["mutual.example.com"]),
    }
    purposes = {"tls-server": "sslserver", "tls-client": "sslclient", "tls-mutual": "sslserver"}
    for profile, csr in csrs.items():
        r = sign(client, root_headers, sub, csr, profile)
        assert r.status_code == 201, r.get_data(as_text=True)
        assert r.mimetype == "application/pem-certificate-chain"
        got = load_chain(r.data)
        assert len(got) == 2 and got[1] == chain[0]  # leaf + intermediate, root left out
        proc = openssl_verify(tmp_path, got[0], chain, purpose=purposes[profile])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert pkilint_findings("cert", got[0].public_bytes(serialization.Encoding.DER)) == []
        assert r.headers["X-Certificate-Serial"] == f"{got[0].serial_number:x}"
        assert got[0].serial_number.bit_length() > 64

    der_csr = make_csr(name("der.example.com"), dns=["der.example.com"], pem=False)
    der = sign(client, root_headers, sub, der_csr, extra_headers={"Accept": "application/pkix-cert"})
    assert der.status_code == 201 and der.mimetype == "application/pkix-cert"
    x509.load_der_x509_certificate(der.data)
    p7 = sign(client, root_headers, sub, der_csr, query_string=None,
              extra_headers={"Accept": "application/pkcs7-mime"})
    assert p7.mimetype == "application/pkcs7-mime" and len(pkcs7.load_der_pkcs7_certificates(p7.data)) == 3
    js = client.post(f"/v1/ca/{sub}/sign", headers=root_headers, json={
        "csr": base64.b64encode(der_csr).decode(), "profile": "tls-server", "format": "json", "validity_days": 10})
    assert js.status_code == 201, js.get_data(as_text=True)
    doc = js.get_json()
    leaf = x509.load_pem_x509_certificate(doc["certificate"].encode())
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days in (9, 10)
    assert doc["requester"].startswith("token:") and doc["status"] == "active"


def test_bad_input_gives_problems_and_issues_nothing(client: Any, root_headers: dict[str, str],
                                                     cas: tuple[str, str], caplog: Any) -> None:
    _root, sub = cas
    before = len(client.get(f"/v1/ca/{sub}/certs", headers=root_headers).get_json()["certificates"])
    good = make_csr(name("ok.example.com"), dns=["ok.example.com"], pem=False)
    tampered = bytearray(good)
    tampered[-5] ^= 0x01  # flips a bit of the signature
    rsa1024 = __import__("cryptography.hazmat.primitives.asymmetric.rsa", fromlist=["rsa"]).generate_private_key(
        65537, 1024)
    cases = [
        (b"not a csr at all", "tls-server", {}, 400, "invalid CSR"),
        (bytes(tampered), "tls-server", {}, 400, "signature"),
        (make_csr(name("weak.example.com"), dns=["weak.example.com"], key=rsa1024), "tls-server", {}, 422,
         "key-type-not-allowed"),
        (make_csr(name("long.example.com"), dns=["long.example.com"]), "tls-server",
         {"validity_days": 5000}, 422, "validity"),
        (make_csr(name("bad name!"), dns=["bad_name!.example.com"]), "tls-server", {}, 422, "violations"),
        (make_csr(name("x.example.com"), dns=["x.example.com"]), "no-such-profile", {}, 404, "profile"),
    ]
    for csr, profile, extra, status, text in cases:
        qs = "&".join(f"{k}={v}" for k, v in extra.items())
        r = client.post(f"/v1/ca/{sub}/sign?profile={profile}&{qs}", data=csr,
                        headers={**root_headers, "Content-Type": "application/pkcs10"})
        assert r.status_code == status, (profile, extra, r.get_data(as_text=True))
        assert r.mimetype == "application/problem+json"
        assert text in r.get_data(as_text=True)
    big = client.post(f"/v1/ca/{sub}/sign?profile=tls-server", data=b"A" * 200_000,
                      headers={**root_headers, "Content-Type": "application/pkcs10"})
    assert big.status_code == 413 and big.mimetype == "application/problem+json"
    viol = sign(client, root_headers, sub, make_csr(name("v.example.com"), dns=["evil_host"]))
    body = viol.get_json()
    assert body["violations"] and body["violations"][0]["field"].startswith("san")
    keygen = client.post(f"/v1/ca/{sub}/keygen", headers=root_headers, json={
        "profile": "tls-server", "subject": "CN=kg.example.com", "password": "short"})
    assert keygen.status_code == 422 and "short" not in keygen.get_data(as_text=True)
    after = len(client.get(f"/v1/ca/{sub}/certs", headers=root_headers).get_json()["certificates"])
    assert after == before
    assert root_headers["X-CSM-Token"] not in caplog.text


def test_server_keygen_returns_pkcs12_under_callers_password(client: Any, root_headers: dict[str, str],
                                                            cas: tuple[str, str], tmp_path: Path) -> None:
    _root, sub = cas
    r = client.post(f"/v1/ca/{sub}/keygen", headers=root_headers, json={
        "profile": "tls-mutual", "subject": "CN=app.example.com", "sans": ["DNS:app.example.com", "IP:10.0.0.9"],
        "password": "correct horse battery", "key_type": "ec-p384"})
    assert r.status_code == 201, r.get_data(as_text=True)
    assert r.mimetype == "application/pkcs12"
    key, cert, extra = pkcs12.load_key_and_certificates(r.data, b"correct horse battery")
    assert cert is not None and key is not None and key.public_key() == cert.public_key()
    assert openssl_verify(tmp_path, cert, anchor(client, sub)).returncode == 0
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(r.data, b"wrong password")
    rec = client.get(f"/v1/ca/{sub}/certs/{cert.serial_number:x}", headers=root_headers).get_json()
    assert rec["server_generated_key"] is True


def test_released_hold_leaves_the_next_crl(client: Any, root_headers: dict[str, str], cas: tuple[str, str]) -> None:
    _root, sub = cas
    cert = load_chain(sign(client, root_headers, sub, make_csr(name("held.example.com"))).data)[0]
    serial = f"{cert.serial_number:x}"
    base = f"/v1/ca/{sub}/certs/{serial}"
    assert client.post(f"{base}/release-hold", headers=root_headers).status_code == 409  # not revoked at all
    held = client.post(f"{base}/revoke", json={"reason": "certificateHold"}, headers=root_headers)
    assert held.status_code == 200 and held.get_json()["status"] == "revoked"
    crl = x509.load_der_x509_crl(client.get(f"/v1/ca/{sub}/crl.der").data)
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    r = client.post(f"{base}/release-hold", headers=root_headers)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["status"] == "active" and r.get_json()["revocation"] is None
    crl = x509.load_der_x509_crl(client.get(f"/v1/ca/{sub}/crl.der").data)
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is None
    again = client.post(f"{base}/release-hold", headers=root_headers)
    assert again.status_code == 409 and again.get_json()["serial"] == serial
    assert client.post(f"/v1/ca/{sub}/certs/abcdef/release-hold", headers=root_headers).status_code == 404
    assert client.post(f"{base}/release-hold").status_code in (401, 403)
    final = client.post(f"{base}/revoke", json={"reason": "keyCompromise"}, headers=root_headers)
    assert final.status_code == 200
    assert client.post(f"{base}/release-hold", headers=root_headers).status_code == 409


def test_search_revoke_crl_and_ocsp(client: Any, root_headers: dict[str, str], cas: tuple[str, str],
                                    tmp_path: Path) -> None:
    _root, sub = cas
    chain = anchor(client, sub)
    leaves = []
    for host in ("a.example.com", "b.example.com"):
        r = sign(client, root_headers, sub, make_csr(name(host), dns=[host]))
        leaves.append(load_chain(r.data)[0])
    a, b = leaves
    found = client.get(f"/v1/ca/{sub}/certs?san=a.example&status=active", headers=root_headers).get_json()
    assert [c["serial"] for c in found["certificates"]] == [f"{a.serial_number:x}"]
    allca = client.get(f"/v1/ca/certificates?serial={b.serial_number:x}", headers=root_headers).get_json()
    assert allca["certificates"][0]["subject"] == "CN=b.example.com"
    soon = client.get(f"/v1/ca/{sub}/certs?expiring_within_days=400", headers=root_headers).get_json()
    assert len(soon["certificates"]) == 2

    crl0 = x509.load_der_x509_crl(client.get(f"/v1/ca/{sub}/crl.der").data)
    rv = client.post(f"/v1/ca/{sub}/certs/{b.serial_number:x}/revoke", json={"reason": "keyCompromise"},
                     headers=root_headers)
    assert rv.status_code == 200, rv.get_data(as_text=True)
    assert rv.get_json()["revocation"]["reason"] == "keyCompromise"
    again = client.post(f"/v1/ca/{sub}/certs/{b.serial_number:x}/revoke", json={"reason": 1}, headers=root_headers)
    assert again.status_code == 409
    unknown = client.post(f"/v1/ca/{sub}/certs/abcdef/revoke", json={}, headers=root_headers)
    assert unknown.status_code == 404
    badreason = client.post(f"/v1/ca/{sub}/certs/{a.serial_number:x}/revoke", json={"reason": "bogus"},
                            headers=root_headers)
    assert badreason.status_code == 400

    crl_resp = client.get(f"/v1/ca/{sub}/crl.pem")
    crl = x509.load_pem_x509_crl(crl_resp.data)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > \
        crl0.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert crl.get_revoked_certificate_by_serial_number(b.serial_number) is not None
    crl_file = write_pem(tmp_path / "crl.pem", crl_resp.data)
    ca_file = write_pem(tmp_path / "issuer.pem", chain[0])
    assert "verify OK" in openssl("crl", "-in", crl_file, "-CAfile", ca_file, "-noout", "-verify").stderr
    assert pkilint_findings("crl", crl.public_bytes(serialization.Encoding.DER)) == []
    revoked = openssl_verify(tmp_path, b, chain, crls=[crl_resp.data, _root_crl(client, cas[0])])
    assert revoked.returncode != 0 and "revoked" in revoked.stdout + revoked.stderr
    fine = openssl_verify(tmp_path, a, chain, crls=[crl_resp.data, _root_crl(client, cas[0])])
    assert fine.returncode == 0, fine.stdout + fine.stderr

    def ask(cert: x509.Certificate, nonce: bytes | None, get: bool = False) -> ocsp.OCSPResponse:
        bld = ocsp.OCSPRequestBuilder().add_certificate(cert, chain[0], hashes.SHA1())
        if nonce:
            bld = bld.add_extension(x509.OCSPNonce(nonce), critical=False)
        der = bld.build().public_bytes(serialization.Encoding.DER)
        if get:
            r = client.get(f"/v1/ca/{sub}/ocsp/" + base64.b64encode(der).decode().replace("/", "%2F"))
        else:
            r = client.post(f"/v1/ca/{sub}/ocsp", data=der, headers={"Content-Type": "application/ocsp-request"})
        assert r.status_code == 200 and r.mimetype == "application/ocsp-response"
        return ocsp.load_der_ocsp_response(r.data)

    good = ask(a, b"n" * 16)
    assert good.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert good.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16
    assert pkilint_findings("ocsp", good.public_bytes(serialization.Encoding.DER)) == []
    bad = ask(b, None, get=True)
    assert bad.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert bad.revocation_reason == x509.ReasonFlags.key_compromise
    garbage = client.post(f"/v1/ca/{sub}/ocsp", data=b"junk", headers={"Content-Type": "application/ocsp-request"})
    assert ocsp.load_der_ocsp_response(garbage.data).response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def _root_crl(client: Any, root: str) -> bytes:
    return bytes(client.get(f"/v1/ca/{root}/crl.pem").data)


def test_profiles_crud_and_custom_profile_rules(client: Any, root_headers: dict[str, str],
                                               cas: tuple[str, str]) -> None:
    _root, sub = cas
    names = [p["name"] for p in client.get(f"/v1/ca/{sub}/profiles", headers=root_headers).get_json()["profiles"]]
    assert names == ["tls-client", "tls-mutual", "tls-server"]
    doc = client.get(f"/v1/ca/{sub}/profiles/tls-server", headers=root_headers).get_json()
    doc.update(name="svc-only", key_types=["ec-p256"], max_validity_seconds=30 * 86400,
               default_validity_seconds=7 * 86400,
               san={"dns": {"patterns": [r"[a-z0-9-]+\.svc\.example\.com"], "max_count": 2, "networks": []}},
               subject={"CN": {"required": False, "patterns": [r"[a-z0-9-]+\.svc\.example\.com"], "max_count": 1}})
    put = client.put(f"/v1/ca/{sub}/profiles/svc-only", json=doc, headers=root_headers)
    assert put.status_code == 200, put.get_data(as_text=True)
    ok = sign(client, root_headers, sub, make_csr(name("a.svc.example.com"), dns=["a.svc.example.com"]), "svc-only")
    assert ok.status_code == 201
    leaf = load_chain(ok.data)[0]
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days in (6, 7)
    no = sign(client, root_headers, sub, make_csr(name("a.other.com"), dns=["a.other.com"]), "svc-only")
    assert no.status_code == 422 and {v["code"] for v in no.get_json()["violations"]} >= {"san-mismatch"}
    rsa = sign(client, root_headers, sub, make_csr(name("r.svc.example.com"), dns=["r.svc.example.com"],
                                                   key=leaf_key(KeyType.RSA_2048)), "svc-only")
    assert rsa.status_code == 422 and "key-type-not-allowed" in rsa.get_data(as_text=True)
    broken = client.put(f"/v1/ca/{sub}/profiles/broken", json={**doc, "name": "broken", "key_types": []},
                        headers=root_headers)
    assert broken.status_code == 422 and broken.get_json()["problems"]
    mismatch = client.put(f"/v1/ca/{sub}/profiles/other", json=doc, headers=root_headers)
    assert mismatch.status_code == 400
    assert client.delete(f"/v1/ca/{sub}/profiles/svc-only", headers=root_headers).status_code == 204
    assert client.get(f"/v1/ca/{sub}/profiles/svc-only", headers=root_headers).status_code == 404


def test_policies_requester_usage_report_and_audit(client: Any, services: Any, root_headers: dict[str, str],
                                                   cas: tuple[str, str]) -> None:
    _root, sub = cas
    pol = client.put("/v1/sys/policies/signer", headers=root_headers, json={"rules": [
        {"path": f"ca/{sub}/sign/tls-client", "capabilities": ["sign"]}]})
    assert pol.status_code in (200, 201, 204), pol.get_data(as_text=True)
    token, info = services.auth.create_token(policies=["signer"], display_name="svc-a")
    h = {"X-CSM-Token": token}
    ok = sign(client, h, sub, make_csr(name("client-a")), "tls-client")
    assert ok.status_code == 201, ok.get_data(as_text=True)
    serial = load_chain(ok.data)[0].serial_number
    denied = sign(client, h, sub, make_csr(name("s.example.com"), dns=["s.example.com"]), "tls-server")
    assert denied.status_code == 403
    assert client.post(f"/v1/ca/{sub}/certs/{serial:x}/revoke", json={}, headers=h).status_code == 403

    use = client.post(f"/v1/ca/{sub}/certs/{serial:x}/usage", json={"host": "node-7", "detail": "ingress"}, headers=h)
    assert use.status_code == 200, use.get_data(as_text=True)
    other = sign(client, root_headers, sub, make_csr(name("client-b")), "tls-client")
    other_serial = load_chain(other.data)[0].serial_number
    assert client.post(f"/v1/ca/{sub}/certs/{other_serial:x}/usage", json={"host": "x"}, headers=h).status_code == 403

    rep = client.get(f"/v1/ca/report?ca={sub}&expiring_days=400", headers=root_headers).get_json()
    requester = f"token:{info.accessor}"
    row = next(r for r in rep["issuance"] if r["requester"] == requester)
    assert row["issued"] == 1 and row["profile"] == "tls-client" and row["expiring"] == 1
    assert any(s["kind"] == "certificate" and s["count"] >= 2 for s in rep["signatures"])
    assert rep["usage"][0]["host"] == "node-7"
    text = client.get(f"/v1/ca/report?ca={sub}&format=csv", headers=root_headers).get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["section"] for r in rows} == {"issuance", "signatures", "usage"}
    assert client.get("/v1/ca/report", headers=h).status_code == 403

    entries = services.audit.entries(after=0, limit=1000)
    seen = {(e["action"] if isinstance(e, dict) else e.action) for e in entries}
    assert {"ca.sign", "ca.create", "ca.report", "ca.cert.usage"} <= seen


def test_a_signing_is_audited_once_with_its_serial_in_the_certificate_transaction(
        client: Any, services: Any, root_headers: dict[str, str], cas: tuple[str, str]) -> None:
    _root, sub = cas
    before = services.audit.entries(after=0, limit=100_000)
    last = before[-1]["seq"] if before else 0
    r = sign(client, root_headers, sub, make_csr(name("audited.example.com"), dns=["audited.example.com"]))
    assert r.status_code == 201, r.get_data(as_text=True)
    serial = load_chain(r.data)[0].serial_number
    entries = [e for e in services.audit.entries(after=last, limit=1000) if e["action"] == "ca.sign"]
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["status"] == 201 and entry["outcome"] == "ok" and entry["resource"] == f"ca/{sub}/sign/tls-server"
    assert entry["detail"]["serial"] == f"{serial:x}" and entry["detail"]["profile"] == "tls-server"

    bad = sign(client, root_headers, sub, b"not a csr")
    assert bad.status_code == 400
    failed = [e for e in services.audit.entries(after=entry["seq"], limit=1000) if e["action"] == "ca.sign"]
    assert len(failed) == 1 and failed[0]["status"] == 400 and "serial" not in failed[0]["detail"]


def test_an_intermediate_needs_sudo_on_its_parent(client: Any, services: Any, root_headers: dict[str, str],
                                                  unique: str) -> None:
    root = f"par-{unique}"
    create_root(client, root_headers, root)
    pol = client.put("/v1/sys/policies/ca-maker", headers=root_headers, json={"rules": [
        {"path": "ca/*", "capabilities": ["create", "read"]}]})
    assert pol.status_code in (200, 201, 204), pol.get_data(as_text=True)
    token, _ = services.auth.create_token(policies=["ca-maker"])
    h = {"X-CSM-Token": token}
    body = {"type": "intermediate", "name": f"sub-{unique}", "parent": root, "subject": f"CN=sub-{unique}"}
    r = client.post("/v1/ca", json=body, headers=h)
    assert r.status_code == 403 and r.mimetype == "application/problem+json", r.get_data(as_text=True)
    assert "sudo" in r.get_json()["detail"]
    entry = services.audit.entries(limit=100000)[-1]
    assert entry["action"] == "ca.create" and entry["outcome"] == "denied"
    assert client.get(f"/v1/ca/sub-{unique}", headers=root_headers).status_code == 404  # nothing created
    client.put("/v1/sys/policies/ca-maker", headers=root_headers, json={"rules": [
        {"path": "ca/*", "capabilities": ["create", "read"]}, {"path": f"ca/{root}", "capabilities": ["sudo"]}]})
    services.auth.cache.clear()
    r = client.post("/v1/ca", json=body, headers=h)
    assert r.status_code == 201, r.get_data(as_text=True)
    # a root needs no parent permission
    assert client.post("/v1/ca", json={"type": "root", "name": f"own-{unique}", "subject": f"CN=own-{unique}"},
                       headers=h).status_code == 201


def test_a_delegated_ocsp_responder_signs_the_answers_until_removed(client: Any, services: Any,
                                                                     root_headers: dict[str, str],
                                                                     cas: tuple[str, str], tmp_path: Path) -> None:
    root, sub = cas
    chain = anchor(client, sub)  # [sub CA, root]
    leaf = load_chain(sign(client, root_headers, sub, make_csr(name("o.example.com"), dns=["o.example.com"])).data)[0]
    url = f"/v1/ca/{sub}/ocsp-responder"
    assert client.get(url, headers=root_headers).status_code == 404

    def ask() -> ocsp.OCSPResponse:
        der = ocsp.OCSPRequestBuilder().add_certificate(leaf, chain[0], hashes.SHA1()).build().public_bytes(
            serialization.Encoding.DER)
        r = client.post(f"/v1/ca/{sub}/ocsp", data=der, headers={"Content-Type": "application/ocsp-request"})
        assert r.status_code == 200
        (tmp_path / "resp.der").write_bytes(r.data)
        return ocsp.load_der_ocsp_response(r.data)

    def ski(cert: x509.Certificate) -> bytes:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest

    assert ask().responder_key_hash == ski(chain[0])  # the CA key signs

    # only sudo on the CA may change who signs its answers
    client.put("/v1/sys/policies/ca-reader", headers=root_headers, json={"rules": [
        {"path": f"ca/{sub}", "capabilities": ["read", "create", "update"]}]})
    token, _ = services.auth.create_token(policies=["ca-reader"])
    assert client.post(url, json={}, headers={"X-CSM-Token": token}).status_code == 403
    assert client.post(url, json={"validity_days": 0}, headers=root_headers).status_code == 422

    r = client.post(url, json={"validity_days": 10}, headers=root_headers)
    assert r.status_code == 201, r.get_data(as_text=True)
    first = r.get_json()
    responder = x509.load_pem_x509_certificate(first["certificate"].encode())
    assert responder.issuer == chain[0].subject
    assert x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING in responder.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    assert (responder.not_valid_after_utc - responder.not_valid_before_utc).days in (9, 10)
    assert client.get(url, headers=root_headers).get_json()["serial"] == first["serial"]

    answer = ask()
    assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert answer.responder_key_hash == ski(responder)
    assert [c.serial_number for c in answer.certificates] == [responder.serial_number]
    issuer = write_pem(tmp_path / "issuer.pem", chain[0])
    trust = write_pem(tmp_path / "trust.pem", chain[-1], chain[0])
    leaf_file = write_pem(tmp_path / "leaf.pem", leaf)
    v = openssl("ocsp", "-respin", tmp_path / "resp.der", "-issuer", issuer, "-cert", leaf_file, "-CAfile", trust)
    assert "Response verify OK" in v.stdout + v.stderr and ": good" in v.stdout, v.stdout + v.stderr
    assert pkilint_findings("ocsp", (tmp_path / "resp.der").read_bytes()) == []

    # a new responder replaces the old one, whose key is destroyed
    second = client.post(url, json={}, headers=root_headers).get_json()
    assert second["serial"] != first["serial"]
    assert not services.keystore.get().exists(first["key_label"])
    assert ask().responder_key_hash != ski(responder)

    assert client.delete(url, headers=root_headers).status_code == 204
    assert not services.keystore.get().exists(second["key_label"])
    assert ask().responder_key_hash == ski(chain[0])  # the CA key again
    assert client.delete(url, headers=root_headers).status_code == 404
    actions = [e["action"] for e in services.audit.entries(limit=100000)]
    assert {"ca.ocsp_responder.issue", "ca.ocsp_responder.remove"} <= set(actions)


def test_a_responder_whose_row_cannot_be_stored_leaves_no_key_in_the_token(client: Any, services: Any,
                                                                             root_headers: dict[str, str],
                                                                             cas: tuple[str, str]) -> None:
    from sqlalchemy import text

    _root, sub = cas
    before = {k.label for k in services.keystore.get().list_keys()}
    with services.engine.begin() as c:  # the database refuses the responder row
        if services.engine.dialect.name == "sqlite":
            c.execute(text("CREATE TRIGGER refuse_responder BEFORE INSERT ON ca_ocsp_responders "
                           "BEGIN SELECT RAISE(ABORT, 'full'); END"))
        else:
            c.execute(text("CREATE FUNCTION refuse_responder() RETURNS trigger LANGUAGE plpgsql AS "
                           "$$ BEGIN RAISE EXCEPTION 'full'; END $$"))
            c.execute(text("CREATE TRIGGER refuse_responder BEFORE INSERT ON ca_ocsp_responders FOR EACH ROW "
                           "EXECUTE FUNCTION refuse_responder()"))
    r = client.post(f"/v1/ca/{sub}/ocsp-responder", json={}, headers=root_headers)
    assert r.status_code >= 500 and r.mimetype == "application/problem+json"
    assert {k.label for k in services.keystore.get().list_keys()} == before  # the new key was destroyed
    assert client.get(f"/v1/ca/{sub}/ocsp-responder", headers=root_headers).status_code == 404
