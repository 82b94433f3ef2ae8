"""End to end with real processes: client certificates through gunicorn, the `csm secrets` CLI,
and two service instances sharing PostgreSQL under check-and-set load."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CSM = [sys.executable, "-m", "sms.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user_env(data_dir: Path, **extra: str) -> dict[str, str]:
    # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would override a Session's verify= in requests
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CSM_") and k not in ("SOFTHSM2_CONF", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env["CSM_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


class Serve:
    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None, tls: bool = True,
                 ca: str | None = None) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.env = env or user_env(data_dir)
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(data_dir.parent / f"serve-{self.port}.log", "w+")  # noqa: SIM115
        extra = [] if tls else ["--plain-http"]
        self.proc = subprocess.Popen([*CSM, "serve", "--host", "127.0.0.1", "--port", str(self.port), *extra, *args],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.ca: str | bool = (ca or str(data_dir / "tls" / "ca.crt")) if tls else False

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"csm serve exited {self.proc.returncode}: {self.output()[-3000:]}")
            try:
                if requests.get(self.url + "/v1/sys/ready", verify=self.ca, timeout=5).status_code == 200:
                    return
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"not ready in {timeout}s: {self.output()[-3000:]}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()

    @property
    def root(self) -> str:
        return (self.data_dir / "root-token").read_text().strip()


# ---- certificates -----------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], cn: str, dns: str, out: Path, *,
          server: bool = False) -> tuple[str, str]:
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    san: list[x509.GeneralName] = [x509.DNSName(dns)]
    if server:
        san.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    eku = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca[1].subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .sign(ca[0], hashes.SHA256()))
    crt, k = out / f"{cn}.crt", out / f"{cn}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    k.chmod(0o600)
    return str(crt), str(k)


@pytest.fixture(scope="module")
def cert_server(tmp_path_factory):
    work = tmp_path_factory.mktemp("certs")
    ca = make_ca("Client CA")
    rogue = make_ca("Rogue CA")
    (work / "ca.pem").write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    certs = {
        "billing": issue(ca, "billing-app", "billing.svc", work),
        "nomatch": issue(ca, "stranger", "stranger.svc", work),
        "rogue": issue(rogue, "billing-rogue", "billing.svc", work),
    }
    (work / "rules.json").write_text(json.dumps({"rules": [
        {"match": {"cn": "billing-*", "dns": "*.svc"}, "policies": ["billing"]},
    ]}))
    server_ca = make_ca("Server CA")
    (work / "server-ca.pem").write_bytes(server_ca[1].public_bytes(serialization.Encoding.PEM))
    srv_crt, srv_key = issue(server_ca, "localhost", "localhost", work, server=True)
    srv = Serve(work / "csm-data", "--server", "gunicorn", "--workers", "1", "--tls-client-ca", str(work / "ca.pem"),
                "--client-cert-rules", str(work / "rules.json"), "--tls-cert", srv_crt, "--tls-key", srv_key,
                ca=str(work / "server-ca.pem"))
    try:
        srv.wait_ready()
        h = {"X-CSM-Token": srv.root}
        s = requests.Session()
        s.trust_env = False
        s.verify = srv.ca
        s.put(srv.url + "/v1/sys/policies/billing", headers=h, json={"rules": [
            {"path": "secrets/billing/*", "capabilities": ["read", "list", "create", "update"]}]}).raise_for_status()
        s.post(srv.url + "/v1/domains", headers=h, json={"name": "billing"}).raise_for_status()
        s.post(srv.url + "/v1/domains/billing/secrets", headers=h,
               json={"name": "db", "values": {"password": "b-pass"}}).raise_for_status()
        s.post(srv.url + "/v1/domains", headers=h, json={"name": "payroll"}).raise_for_status()
        yield srv, certs, work
    finally:
        srv.stop()


def test_client_certificate_maps_to_policies_through_gunicorn(cert_server):
    srv, certs, _ = cert_server
    r = requests.get(srv.url + "/v1/domains/billing/secrets/db", cert=certs["billing"], verify=srv.ca, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["values"] == {"password": "b-pass"}
    assert requests.get(srv.url + "/v1/domains/payroll/secrets", cert=certs["billing"], verify=srv.ca,
                        timeout=10).status_code == 403
    assert requests.get(srv.url + "/v1/domains/billing/secrets/db", verify=srv.ca, timeout=10).status_code == 401
    assert requests.get(srv.url + "/v1/domains/billing/secrets/db", cert=certs["nomatch"], verify=srv.ca,
                        timeout=10).status_code == 401
    with pytest.raises(requests.exceptions.RequestException):
        r = requests.get(srv.url + "/v1/domains/billing/secrets/db", cert=certs["rogue"], verify=srv.ca, timeout=10)
        assert r.status_code in (401, 403)  # if the handshake were ever accepted, still no access
        raise requests.exceptions.SSLError("accepted")


def test_onapsmsclient_authenticates_with_a_client_certificate(cert_server):
    onapsmsclient = pytest.importorskip("onapsmsclient")
    srv, certs, _ = cert_server
    c = onapsmsclient.Client(url=srv.url, timeout=10, cacert=srv.ca)
    c.session.cert = certs["billing"]  # the library itself is unchanged; requests carries the certificate
    assert c.getSecret("billing", "db") == {"password": "b-pass"}
    assert c.storeSecret("billing", "api", {"key": "k1"}) is True
    assert sorted(c.getSecretNames("billing")) == ["api", "db"]


def test_cli_imports_preload_idempotently_and_rewraps(cert_server):
    srv, _certs, work = cert_server
    preload = work / "preload.json"
    preload.write_text(json.dumps({"domains": [{"name": "onap-preload", "secrets": [
        {"name": "aai", "values": {"user": "aai@aai.onap.org", "password": "demo123456!"}},
        {"name": "so", "values": {"user": "so", "port": 8080}}]}]}))
    env = user_env(srv.data_dir)
    common = ["--addr", srv.url, "--ca-cert", str(srv.ca)]
    first = subprocess.run([*CSM, "secrets", "import", str(preload), *common, "--json"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["secrets_created"] == 2
    again = subprocess.run([*CSM, "secrets", "import", str(preload), *common, "--json"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert json.loads(again.stdout) == {"domains_created": 0, "secrets_created": 0, "secrets_updated": 0,
                                        "secrets_unchanged": 2}
    got = subprocess.run([*CSM, "secrets", "get", "onap-preload", "so", *common], env=env, capture_output=True,
                         text=True, timeout=120)
    assert json.loads(got.stdout) == {"user": "so", "port": 8080}
    for verb in (["rotate-domain", "onap-preload"], ["rotate-master"], ["rewrap"]):
        r = subprocess.run([*CSM, "secrets", *verb, *common, "--json"], env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["versions_resealed"] >= 2
    got = subprocess.run([*CSM, "secrets", "get", "onap-preload", "aai", *common], env=env, capture_output=True,
                         text=True, timeout=120)
    assert json.loads(got.stdout)["password"] == "demo123456!"
    out = work / "backup.json"
    r = subprocess.run([*CSM, "secrets", "export", str(out), *common], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "demo123456!" not in out.read_text()
    assert oct(out.stat().st_mode & 0o777) == "0o600"


# ---- two instances on one PostgreSQL database ----------------------------------------------
@pytest.mark.postgres
def test_two_instances_on_postgresql_never_lose_an_acknowledged_update(tmp_path):
    from .conftest import PG_URL, PgSchema, require_pg

    require_pg()
    schema = PgSchema()
    url = PG_URL + ("&" if "?" in PG_URL else "?") + f"options=-csearch_path%3D{schema.name}"
    data = tmp_path / "csm-data"
    env = user_env(data, CSM_DATABASE_URL=url)
    # the second instance starts once the first has initialised (csm init is not meant to race itself)
    servers = [Serve(data, "--workers", "1", env=env, tls=False)]
    try:
        servers[0].wait_ready()
        servers.append(Serve(data, "--workers", "1", env=env, tls=False))
        servers[1].wait_ready()
        h = {"X-CSM-Token": servers[0].root}
        a, b = servers[0].url, servers[1].url
        requests.post(a + "/v1/domains", json={"name": "shared"}, headers=h, timeout=10).raise_for_status()
        requests.post(a + "/v1/domains/shared/secrets", json={"name": "counter", "values": {"n": 0}}, headers=h,
                      timeout=10).raise_for_status()
        script = r'''
import json, sys, requests
url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = requests.Session(); s.headers["X-CSM-Token"] = token
acked = []
for _ in range(n):
    while True:
        cur = s.get(url + "/v1/domains/shared/secrets/counter", timeout=30).json()
        r = s.put(url + "/v1/domains/shared/secrets/counter", timeout=30,
                  json={"values": {"n": cur["values"]["n"] + 1}, "cas": cur["version"]})
        if r.status_code == 200:
            acked.append(r.json()["version"]); break
        assert r.status_code == 409, r.text
print(json.dumps(acked))
'''
        procs = [subprocess.Popen([sys.executable, "-c", script, url_, servers[0].root, "25"], stdout=subprocess.PIPE,
                                  text=True) for url_ in (a, b, a, b)]
        acked = []
        for p in procs:
            out, _ = p.communicate(timeout=180)
            assert p.returncode == 0
            acked += json.loads(out)
        final = requests.get(b + "/v1/domains/shared/secrets/counter", headers=h, timeout=10).json()
        assert final["values"]["n"] == 100 == len(acked)
        assert sorted(acked) == list(range(2, 102))  # every acknowledged version is distinct and in order
    finally:
        for s in servers:
            s.stop()
        schema.drop()
