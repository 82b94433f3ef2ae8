"""Test helpers for CMP: a small PKI made with cryptography, an ``openssl cmp`` runner and a
bounded HTTP server on 127.0.0.1 that hands request bytes to a Python callable."""
from __future__ import annotations

import datetime as dt
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class TestPki:
    """A root CA (EC P-256) that issues v3 certificates; PEM files under ``directory``."""

    __test__ = False

    def __init__(self, directory: Path, cn: str = "Test CMP CA") -> None:
        self.dir = directory
        self.ca_key = ec_key()
        self.ca_name = name(cn)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key())
        self.ca_cert = (
            x509.CertificateBuilder().subject_name(self.ca_name).issuer_name(self.ca_name)
            .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now() - dt.timedelta(minutes=5)).not_valid_after(now() + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.write_cert("ca.crt", self.ca_cert)

    def issue(self, subject: x509.Name, public_key: object, *, days: int = 10,
              extensions: x509.Extensions | None = None, not_before: dt.datetime | None = None) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.ca_name)
             .public_key(public_key).serial_number(x509.random_serial_number())  # type: ignore[arg-type]
             .not_valid_before(not_before or now() - dt.timedelta(minutes=5))
             .not_valid_after((not_before or now()) + dt.timedelta(days=days))
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                            critical=False))
        seen = {x509.SubjectKeyIdentifier.oid, x509.AuthorityKeyIdentifier.oid}
        for ext in extensions or ():
            if ext.oid not in seen:
                b = b.add_extension(ext.value, ext.critical)
        return b.sign(self.ca_key, hashes.SHA256())

    def write_cert(self, fname: str, cert: x509.Certificate) -> Path:
        p = self.dir / fname
        p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return p

    def write_key(self, fname: str, key: object) -> Path:
        p = self.dir / fname
        p.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                                        serialization.NoEncryption()))
        return p

    def entity(self, stem: str, cn: str, *, key: object | None = None) -> tuple[object, x509.Certificate]:
        """Key + certificate for ``cn``, written as <stem>.key / <stem>.crt."""
        k = key or ec_key()
        c = self.issue(name(cn), k.public_key())  # type: ignore[attr-defined]
        self.write_key(stem + ".key", k)
        self.write_cert(stem + ".crt", c)
        return k, c


def openssl_cmp(*args: str | Path, cwd: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSSL")}
    r = subprocess.run([OPENSSL, "cmp", "-config", "", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout, r.stdout)  # openssl logs to both


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    max_body = 1 << 20
    timeout = 10

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        if length <= 0 or length > self.max_body:
            self.send_response(413)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.rfile.read(length)
        self.server.requests.append(data)  # type: ignore[attr-defined]
        out = self.server.app(data)  # type: ignore[attr-defined]
        self.server.responses.append(out)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/pkixcmp")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@contextmanager
def cmp_http_server(app: Callable[[bytes], bytes]) -> Iterator[_Server]:
    """Serve ``app`` (DER in → DER out) on 127.0.0.1:<ephemeral>; ``server.url`` is the base URL."""
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.app = app  # type: ignore[attr-defined]
    srv.requests = []  # type: ignore[attr-defined]
    srv.responses = []  # type: ignore[attr-defined]
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/pkix/"  # type: ignore[attr-defined]
    srv.hostport = f"127.0.0.1:{srv.server_address[1]}"  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)
