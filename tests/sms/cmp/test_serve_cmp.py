"""End to end as a user runs it: `csm serve` (granian, 2 workers, plain HTTP on 127.0.0.1, plus the
plain-HTTP CMP-only listener), a CA created over REST, a CMP profile created with
`csm cmp profile create`, and the real `openssl cmp` enrolling (over the CMP-only listener),
updating and revoking (over the main listener); the CLI's exit codes and help."""
from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.client_sdk.cmptools import ec_key, openssl_cmp
from tests.sms.served import Served, cli, free_port

SECRET = "e2e-Shared-Secret-0815"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("cmp-e2e") / "csm-data"
    cmp_port = free_port()
    with Served(data, "--workers", "2", env={"CMP_SECRET": SECRET, "CSM_CMP_HTTP_PORT": str(cmp_port)}) as s:
        s.cmp_http = f"127.0.0.1:{cmp_port}"  # type: ignore[attr-defined]
        _wait_listening(s.cmp_http)
        r = s.post("/v1/ca", json={"name": "issuing", "type": "root", "subject": "CN=csm E2E CMP CA,O=csm"})
        assert r.status_code == 201, r.text
        yield s


def _wait_listening(hostport: str, timeout: float = 30) -> None:
    import time

    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(f"http://{hostport}/", timeout=5)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _key(d: Path, fname: str) -> None:
    (d / fname).write_bytes(ec_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))


def test_profile_via_cli_then_openssl_cmp_enrols_updates_and_revokes(srv: Served, tmp_path: Path) -> None:
    r = cli(["cmp", "profile", "create", "nf", "--ca", "issuing", "--cert-profile", "tls-mutual", "--default",
             "--secret", "nf-ref=env:CMP_SECRET", "--confirm-timeout", "60", "--json"], srv.env)
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout and '"nf-ref"' in r.stdout
    ca_pem = srv.get("/v1/ca/issuing/ca.pem").content
    (tmp_path / "ca.crt").write_bytes(ca_pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    recipient = "/" + "/".join(reversed(ca.subject.rfc4514_string().split(",")))
    for n in ("k1", "k2"):
        _key(tmp_path, n + ".key")
    server = srv.url.removeprefix("http://")
    r = _openssl(tmp_path, srv.cmp_http, ".well-known/cmp", "-ref", "nf-ref", "-secret", "env:CMP_SECRET",
                 "-recipient", recipient, "-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=nf1.example.com",
                 "-certout", "nf1.pem", env={"CMP_SECRET": SECRET})
    assert r.returncode == 0, r.stdout
    r = _openssl(tmp_path, server, ".well-known/cmp/p/nf", "-cert", "nf1.pem", "-key", "k1.key", "-trusted", "ca.crt",
                 "-recipient", recipient, "-cmd", "kur", "-newkey", "k2.key", "-certout", "nf1-new.pem")
    assert r.returncode == 0, r.stdout
    r = _openssl(tmp_path, server, ".well-known/cmp/p/nf", "-cert", "nf1-new.pem", "-key", "k2.key", "-trusted",
                 "ca.crt", "-recipient", recipient, "-cmd", "rr", "-oldcert", "nf1-new.pem", "-revreason", "4")
    assert r.returncode == 0, r.stdout
    new = x509.load_pem_x509_certificate((tmp_path / "nf1-new.pem").read_bytes())
    crl = x509.load_der_x509_crl(srv.get("/v1/ca/issuing/crl.der").content)
    assert crl.get_revoked_certificate_by_serial_number(new.serial_number) is not None
    shown = cli(["cmp", "profile", "show", "nf"], srv.env)
    assert shown.returncode == 0 and "nf-ref" in shown.stdout and SECRET not in shown.stdout
    listed = cli(["cmp", "profile", "list"], srv.env)
    assert listed.returncode == 0 and listed.stdout.startswith("nf (default)")
    assert cli(["cmp", "requests", "list"], srv.env).returncode == 0
    assert cli(["cmp", "sweep", "--json"], srv.env).returncode == 0
    raw = b"".join(p.read_bytes() for p in srv.data_dir.glob("csm.db*"))
    assert SECRET.encode() not in raw
    assert SECRET not in srv.output()


def _openssl(cwd: Path, server: str, path: str, *args: str, env: dict[str, str] | None = None):
    if env:
        import os

        os.environ.update(env)  # openssl_cmp passes the test process's environment on
    return openssl_cmp("-server", server, "-path", path, *args, cwd=cwd)


def test_cmp_http_listener_serves_only_cmp(srv: Served) -> None:
    import requests

    base = "http://" + srv.cmp_http
    for method, path in (("GET", "/v1/sys/ready"), ("GET", "/v1/ca"), ("POST", "/v1/cmp/profiles"),
                         ("GET", "/"), ("POST", "/.well-known/cmpx")):
        r = requests.request(method, base + path, timeout=10, headers=dict(srv.http.headers))
        assert r.status_code == 404, (path, r.status_code)
        assert r.headers["Content-Type"] == "application/problem+json" and r.json()["status"] == 404
    r = requests.post(base + "/.well-known/cmp", data=b"\x30\x03\x02\x01", timeout=10,
                      headers={"Content-Type": "application/pkixcmp"})
    assert r.status_code in (200, 400) and r.status_code != 404  # reaches the CMP view
    assert f"CMP over plain HTTP: http://{srv.cmp_http}/.well-known/cmp" in srv.output()


def test_cli_exit_codes_and_help(srv: Served) -> None:
    assert cli(["cmp", "profile", "show", "no-such"], srv.env).returncode == 1
    assert cli(["cmp", "profile", "create", "x", "--ca", "issuing"], srv.env).returncode == 2
    bad = cli(["cmp", "profile", "create", "x", "--ca", "issuing", "--cert-profile", "tls-server",
               "--secret", "ref=" + SECRET], srv.env)
    assert bad.returncode == 2 and SECRET not in bad.stderr
    assert cli(["cmp", "requests", "approve", "nf", "00ff"], srv.env).returncode == 1


def test_every_cmp_verb_has_help() -> None:
    from click.testing import CliRunner

    from sms.cli import main

    for verb in (["cmp"], ["cmp", "profile"], ["cmp", "profile", "create"], ["cmp", "profile", "update"],
                 ["cmp", "profile", "list"], ["cmp", "profile", "show"], ["cmp", "profile", "delete"],
                 ["cmp", "requests"], ["cmp", "requests", "list"], ["cmp", "requests", "approve"],
                 ["cmp", "requests", "reject"], ["cmp", "sweep"]):
        r = CliRunner().invoke(main, [*verb, "--help"])
        assert r.exit_code == 0 and "Usage:" in r.output, verb
