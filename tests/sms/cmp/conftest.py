"""Fixtures for the CMP service: a service on a fresh database with a root CA and an issuing
CA in the token (through ``sms.ca.wiring.ca_engine``), CMP profiles, and the Flask app served by
a real HTTP server (werkzeug, threaded) on 127.0.0.1."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from werkzeug.serving import make_server

from ca import CaEngine, CaRecord, CreateIntermediateRequest, CreateRootRequest
from sms.ca.wiring import ca_engine
from sms.cmp.service import CmpService
from sms.cmp.store import CmpProfile
from sms.cmp.wiring import cmp_service
from sms.runtime import Services
from tests.client_sdk.cmptools import openssl_cmp

SECRET = "pbm-Secret-4711-onap"
REF = "nf-ref"
CRL_URL = "http://pki.example.com/crl/{ca}.crl"


@dataclass
class CmpEnv:
    svc: Services
    engine: CaEngine
    root: CaRecord
    issuing: CaRecord
    cmp: CmpService
    app: Any
    dir: Path
    hostport: str = ""
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def client(self) -> Any:
        return self.app.test_client()

    def profile(self, name: str, **kw: Any) -> CmpProfile:
        secrets = kw.pop("secrets", {REF: SECRET})
        anchors = kw.pop("trust_anchors", (self.root.certificate,))
        return self.cmp.create_profile(CmpProfile(name=name, ca="issuing", cert_profile=kw.pop("cert_profile",
                                                                                              "tls-mutual"),
                                                  trust_anchors=anchors,
                                                  response_pbm_iterations=kw.pop("response_pbm_iterations", 1000),
                                                  **kw),
                                       secrets)

    def run(self, profile: str, *args: str | Path, timeout: float = 30) -> Any:
        return openssl_cmp("-server", self.hostport, "-path", f".well-known/cmp/p/{profile}", *args, cwd=self.dir,
                           timeout=timeout)

    def pbm(self, profile: str, *args: str | Path, secret: str = SECRET, ref: str = REF) -> Any:
        return self.run(profile, "-ref", ref, "-secret", "pass:" + secret, "-recipient", self.ca_dn, *args)

    def sig(self, profile: str, cert: str, key: str, *args: str | Path) -> Any:
        return self.run(profile, "-cert", cert, "-key", key, "-trusted", "root.crt", "-untrusted", "issuing.crt",
                        "-recipient", self.ca_dn, *args)

    @property
    def ca_dn(self) -> str:
        return "/" + "/".join(reversed(self.issuing.certificate.subject.rfc4514_string().split(",")))

    def cert(self, fname: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.dir / fname).read_bytes())


def _pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


def build_env(svc: Services, directory: Path) -> CmpEnv:
    from sms.app import create_app

    engine = ca_engine(svc)
    root = engine.create_root(CreateRootRequest(name="root", subject="CN=csm CMP Test Root,O=csm,C=DE"))
    issuing = engine.create_intermediate(CreateIntermediateRequest(
        name="issuing", parent="root", subject="CN=csm CMP Issuing CA,O=csm,C=DE",
        crl_url=CRL_URL.format(ca="root")))
    engine.install_builtin_profiles("issuing", crl_url=CRL_URL.format(ca="issuing"))
    (directory / "root.crt").write_bytes(_pem(root.certificate))
    (directory / "issuing.crt").write_bytes(_pem(issuing.certificate))
    return CmpEnv(svc, engine, root, issuing, cmp_service(svc), create_app(services=svc), directory)


class _Served:
    def __init__(self, app: Any) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1:<ephemeral> with a real (threaded werkzeug) HTTP server."""
    s = _Served(app)
    try:
        yield f"127.0.0.1:{s.port}"
    finally:
        s.stop()


CT = {"Content-Type": "application/pkixcmp"}


@pytest.fixture
def env(services: Services, tmp_path: Path) -> CmpEnv:
    """The ``services`` of the test's backend with root + issuing CA and the default CMP profile
    ``test`` (in process; a module may override it)."""
    e = build_env(services, tmp_path)
    e.profile("test", default=True)
    return e


@pytest.fixture
def cmp_env(make_services: Any, tmp_path: Path) -> Iterator[CmpEnv]:
    """SQLite service with root + issuing CA, served on 127.0.0.1 (``hostport``)."""
    env = build_env(make_services("sqlite"), tmp_path)
    with served(env.app) as hostport:
        env.hostport = hostport
        yield env


@pytest.fixture
def shm_cmp_env(keystore: Any, tmp_path: Path) -> Iterator[CmpEnv]:
    """Like ``cmp_env`` but with the SQLite database on tmpfs: for the bounded fuzz
    run, whose thousands of audited requests would otherwise wait on fsync behind other I/O."""
    import shutil
    import tempfile

    from hsm import DuplicateLabel, KeyType
    from sms import db
    from sms.config import Settings
    from sms.runtime import AUDIT_MAC_KEY, build_services

    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path
    data = Path(tempfile.mkdtemp(prefix="csm-cmp-fuzz-", dir=base))
    settings = Settings(data_dir=str(data), plain_http=True)
    engine = db.make_engine(settings.effective_database_url)
    svc = build_services(settings, engine=engine, keystore=keystore)
    db.migrate(engine)
    if not keystore.exists(AUDIT_MAC_KEY):
        try:
            keystore.generate(AUDIT_MAC_KEY, KeyType.AES_256)
        except DuplicateLabel:
            pass
    try:
        env = build_env(svc, tmp_path)
        with served(env.app) as hostport:
            env.hostport = hostport
            yield env
    finally:
        engine.dispose()
        shutil.rmtree(data, ignore_errors=True)
