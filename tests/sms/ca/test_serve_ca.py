"""End to end against the real `csm serve` (granian, 2 workers, plain HTTP on 127.0.0.1): the
`csm ca` CLI, `openssl verify` / `openssl crl` / `openssl ocsp` against the running service, and
pkilint on what it served."""
from __future__ import annotations

import re
import time
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.ca.conftest import make_csr, name, openssl, pkilint_findings
from tests.sms.served import Served, cli


@pytest.fixture(scope="module")
def served(tmp_path_factory: Any) -> Any:
    data = tmp_path_factory.mktemp("ca-e2e") / "csm-data"
    data.mkdir(parents=True)
    with Served(data, workers=2) as srv:
        yield srv


def csm(srv: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(["ca", *args], srv.env, timeout=120)


def test_cli_and_openssl_against_the_running_service(served: Any, tmp_path: Path) -> None:
    srv = served
    r = csm(srv, "init", "e2e-root", "--subject", "CN=E2E Root,O=csm", "--key-type", "ec-p384")
    assert r.returncode == 0, r.stdout + r.stderr
    r = csm(srv, "intermediate", "e2e-sub", "--parent", "e2e-root", "--subject", "CN=E2E Issuing,O=csm")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "e2e-sub" in csm(srv, "list").stdout
    assert "tls-server" in csm(srv, "profile", "list", "e2e-sub").stdout

    base = f"{srv.url}/v1/ca/e2e-sub"
    (tmp_path / "chain.pem").write_bytes(requests.get(f"{base}/chain.pem", timeout=10).content)
    (tmp_path / "issuer.pem").write_bytes(requests.get(f"{base}/ca.pem", timeout=10).content)
    (tmp_path / "root.pem").write_bytes(requests.get(f"{srv.url}/v1/ca/e2e-root/ca.pem", timeout=10).content)

    serials = {}
    for host in ("good.example.com", "bad.example.com"):
        (tmp_path / f"{host}.csr").write_bytes(make_csr(name(host), dns=[host]))
        r = csm(srv, "sign", str(tmp_path / f"{host}.csr"), "--ca", "e2e-sub", "--profile", "tls-server",
                "--out", str(tmp_path / f"{host}.pem"))
        assert r.returncode == 0, r.stdout + r.stderr
        serials[host] = re.search(r"serial ([0-9a-f]+)", r.stderr).group(1)  # type: ignore[union-attr]
        v = openssl("verify", "-x509_strict", "-CAfile", tmp_path / "root.pem", "-untrusted", tmp_path / "issuer.pem",
                    tmp_path / f"{host}.pem")
        assert v.returncode == 0, v.stdout + v.stderr
        cert = x509.load_pem_x509_certificate((tmp_path / f"{host}.pem").read_bytes())
        assert pkilint_findings("cert", cert.public_bytes(Encoding.DER)) == []

    r = csm(srv, "revoke", serials["bad.example.com"], "--ca", "e2e-sub", "--reason", "certificateHold")
    assert r.returncode == 0, r.stdout + r.stderr
    r = csm(srv, "release-hold", serials["bad.example.com"], "--ca", "e2e-sub")
    assert r.returncode == 0 and "status active" in r.stdout, r.stdout + r.stderr
    r = csm(srv, "revoke", serials["bad.example.com"], "--ca", "e2e-sub", "--reason", "keyCompromise")
    assert r.returncode == 0, r.stdout + r.stderr
    again = csm(srv, "revoke", serials["bad.example.com"], "--ca", "e2e-sub")
    assert again.returncode == 1 and "already revoked" in again.stderr
    assert csm(srv, "revoke", "zz-not-hex", "--ca", "e2e-sub").returncode == 1
    assert csm(srv, "revoke", "--ca").returncode == 2

    r = csm(srv, "crl", "e2e-sub", "--out", str(tmp_path / "crl.pem"))
    assert r.returncode == 0, r.stderr
    (tmp_path / "root-crl.pem").write_bytes(requests.get(f"{srv.url}/v1/ca/e2e-root/crl.pem", timeout=10).content)
    assert "verify OK" in openssl("crl", "-in", tmp_path / "crl.pem", "-CAfile", tmp_path / "issuer.pem",
                                  "-noout", "-verify").stderr
    both = tmp_path / "crls.pem"
    both.write_bytes((tmp_path / "crl.pem").read_bytes() + (tmp_path / "root-crl.pem").read_bytes())
    revoked = openssl("verify", "-crl_check_all", "-CRLfile", both, "-CAfile", tmp_path / "root.pem",
                      "-untrusted", tmp_path / "issuer.pem", tmp_path / "bad.example.com.pem")
    assert revoked.returncode != 0 and "certificate revoked" in revoked.stdout + revoked.stderr
    fine = openssl("verify", "-crl_check_all", "-CRLfile", both, "-CAfile", tmp_path / "root.pem",
                   "-untrusted", tmp_path / "issuer.pem", tmp_path / "good.example.com.pem")
    assert fine.returncode == 0, fine.stdout + fine.stderr

    def ocsp(*target: str | Path) -> str:
        p = openssl("ocsp", "-issuer", tmp_path / "issuer.pem", *target, "-url", f"{base}/ocsp",
                    "-CAfile", tmp_path / "chain.pem", "-respout", tmp_path / "resp.der", "-resp_text")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "Response verify OK" in p.stderr  # signature and nonce checked by openssl
        assert "WARNING: no nonce" not in p.stdout + p.stderr
        assert pkilint_findings("ocsp", (tmp_path / "resp.der").read_bytes()) == []
        return p.stdout

    assert re.search(r"good.example.com.pem: good", ocsp("-cert", tmp_path / "good.example.com.pem"))
    out = ocsp("-cert", tmp_path / "bad.example.com.pem")
    assert "bad.example.com.pem: revoked" in out and "Reason: keyCompromise" in out
    assert ": unknown" in ocsp("-serial", "0x1234567890abcdef1234")

    # a delegated responder (key in the token) signs the answers; openssl checks its delegation
    assert csm(srv, "ocsp-responder", "show", "e2e-sub").returncode == 1
    r = csm(srv, "ocsp-responder", "issue", "e2e-sub", "--days", "7")
    assert r.returncode == 0 and "issued OCSP responder of e2e-sub" in r.stdout, r.stdout + r.stderr
    deadline = time.monotonic() + 10  # the other worker takes it up within RESPONDER_TTL (5 s)
    while "OCSP Responder" not in (out := ocsp("-cert", tmp_path / "good.example.com.pem")):
        assert time.monotonic() < deadline, out  # the CA key answers meanwhile (and openssl accepts it)
        time.sleep(0.5)
    assert "good.example.com.pem: good" in out  # signed by the responder, whose certificate is in the answer
    assert csm(srv, "ocsp-responder", "remove", "e2e-sub").returncode == 0
    assert "OCSP Responder" not in ocsp("-cert", tmp_path / "good.example.com.pem")

    rep = csm(srv, "report", "--csv", "--ca", "e2e-sub", "--expiring-days", "400")
    assert rep.returncode == 0 and rep.stdout.startswith("section,ca,profile")
    assert "issuance,e2e-sub,tls-server,token:" in rep.stdout
    table = csm(srv, "report")
    assert table.returncode == 0 and "SIGNATURES" in table.stdout


def test_every_ca_verb_has_help() -> None:
    from click.testing import CliRunner

    from sms.cli import main

    for verb in ("init", "intermediate", "import", "list", "sign", "revoke", "release-hold", "crl", "report", "profile", "ocsp-responder",
                 "profile list", "profile show", "profile put", "profile delete"):
        h = CliRunner().invoke(main, ["ca", *verb.split(), "--help"])
        assert h.exit_code == 0 and "Usage:" in h.output, verb


def test_service_tls_certificate_comes_from_a_ca_once_configured(tmp_path: Path) -> None:
    """One issuer decides: with tls_ca set, an init pass (what every `csm serve` start runs)
    keeps a good CA certificate instead of re-issuing from the bootstrap CA, and `csm tls
    reissue` issues from the CA too."""
    import ssl

    data = tmp_path / "csm-data"
    data.mkdir()
    with Served(data, workers=2, tls=True) as srv:
        token = (data / "root-token").read_text().strip()
        r = requests.post(srv.url + "/v1/ca", json={"name": "svc-tls", "subject": "CN=Service TLS Root"},
                          headers={"X-CSM-Token": token}, verify=str(data / "tls" / "ca.crt"), timeout=30)
        assert r.status_code == 201, r.text
        bootstrap_issuer = x509.load_pem_x509_certificate((data / "tls" / "server.crt").read_bytes()).issuer
        env = {**srv.env, "CSM_TLS_CA": "svc-tls"}

    def server_cert() -> x509.Certificate:
        return x509.load_pem_x509_certificate((data / "tls" / "server.crt").read_bytes())

    serials = []
    for _start in range(2):  # the init step of two `csm serve` starts
        r = cli(["init"], env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert server_cert().issuer.rfc4514_string() == "CN=Service TLS Root"
        serials.append(server_cert().serial_number)
    assert serials[0] == serials[1] and r.stdout.count("TLS server certificate issued") == 0
    r = cli(["tls", "reissue"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    reissued = server_cert()
    assert reissued.issuer.rfc4514_string() == "CN=Service TLS Root" and reissued.serial_number != serials[0]
    with Served(data, "--tls-ca", "svc-tls", workers=2, tls=True) as srv:  # default profile tls-server
        # ready means verified with tls/ca.crt, which now also holds the CA's root
        served = x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", srv.port)).encode())
        assert served.issuer.rfc4514_string() == "CN=Service TLS Root" != bootstrap_issuer.rfc4514_string()
        assert served.serial_number == reissued.serial_number  # this start issued nothing
        found = requests.get(srv.url + "/v1/ca/svc-tls/certs?requester=csm:server-tls",
                             headers={"X-CSM-Token": token}, verify=str(data / "tls" / "ca.crt"), timeout=30).json()
        assert sorted(c["serial"] for c in found["certificates"]) == sorted(f"{n:x}" for n in (serials[0],
                                                                                                reissued.serial_number))
