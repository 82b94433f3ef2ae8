"""Fixtures: a test PKI on disk and real ``openssl cmp`` messages captured from its in-process mock
server (``-use_mock_srv``: no sockets), one transaction per body type."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from .cmptools import TestPki, name, openssl_cmp

SECRET = b"s3cr3t"


@dataclass(repr=False)
class Captured:
    dir: Path
    pki: TestPki
    client_key: object
    client_cert: x509.Certificate
    server_key: object
    server_cert: x509.Certificate
    new_key: object
    new_cert: x509.Certificate
    messages: dict[str, list[bytes]]  # name -> [req0, rsp0, req1, rsp1, ...]

    def __repr__(self) -> str:
        return f"Captured({self.dir})"

    def req(self, run: str, i: int = 0) -> bytes:
        return self.messages[run][2 * i]

    def rsp(self, run: str, i: int = 0) -> bytes:
        return self.messages[run][2 * i + 1]

    def all(self) -> list[tuple[str, bytes]]:
        return [(f"{n}#{i}", m) for n, ms in self.messages.items() for i, m in enumerate(ms)]


@pytest.fixture(scope="session")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Captured:
    d = tmp_path_factory.mktemp("cmp-capture")
    pki = TestPki(d, "Mock CA")
    k1, c1 = pki.entity("cl", "client1")
    ks, cs = pki.entity("srv", "Mock CMP Server")
    k2, c2 = pki.entity("new", "client2")
    csr = x509.CertificateSigningRequestBuilder().subject_name(name("client2")).sign(k2, hashes.SHA256())  # type: ignore[arg-type]
    (d / "new.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    sig = ["-use_mock_srv", "-srv_cert", "srv.crt", "-srv_key", "srv.key", "-srv_trusted", "ca.crt",
           "-rsp_cert", "new.crt", "-rsp_capubs", "ca.crt", "-trusted", "ca.crt", "-recipient", "/CN=Mock CA",
           "-cert", "cl.crt", "-key", "cl.key"]
    pbm = ["-use_mock_srv", "-srv_ref", "mock-srv", "-srv_secret", "pass:s3cr3t", "-rsp_cert", "new.crt",
           "-rsp_capubs", "ca.crt", "-ref", "client-ref", "-secret", "pass:s3cr3t", "-recipient", "/CN=Mock CA"]
    enroll = ["-newkey", "new.key", "-subject", "/CN=client2", "-certout", "out.pem"]
    runs: dict[str, tuple[list[str], int]] = {
        "ir": (pbm + ["-cmd", "ir", *enroll], 0),
        "ir_sha512": (pbm + ["-cmd", "ir", "-mac", "hmacWithSHA256", "-digest", "sha512", "-days", "5",
                             "-sans", "test.example,10.1.2.3", *enroll], 0),
        "cr": (sig + ["-cmd", "cr", *enroll], 0),
        "kur": (["-use_mock_srv", "-srv_cert", "srv.crt", "-srv_key", "srv.key", "-srv_trusted", "ca.crt",
                 "-rsp_cert", "new.crt", "-trusted", "ca.crt", "-cert", "new.crt", "-key", "new.key",
                 "-cmd", "kur", "-newkey", "new.key", "-certout", "out.pem"], 0),
        "p10cr": (sig + ["-cmd", "p10cr", "-csr", "new.csr", "-certout", "out.pem"], 0),
        "rr": (sig + ["-cmd", "rr", "-oldcert", "new.crt", "-revreason", "1"], 0),
        "genm": (sig + ["-cmd", "genm"], 0),
        "implicit": (sig + ["-grant_implicitconf", "-implicit_confirm", "-cmd", "cr", *enroll], 0),
        "poll": (sig + ["-poll_count", "2", "-check_after", "0", "-cmd", "cr", *enroll], 0),
        "error": (sig + ["-send_error", "-cmd", "cr", *enroll], 1),
        "reject": (sig + ["-pkistatus", "2", "-failure", "9", "-statusstring", "nope", "-cmd", "cr", *enroll], 1),
    }
    messages: dict[str, list[bytes]] = {}
    for run, (args, rc) in runs.items():
        reqs = [f"{run}_req{i}.der" for i in range(5)]
        rsps = [f"{run}_rsp{i}.der" for i in range(5)]
        r = openssl_cmp(*args, "-reqout", ",".join(reqs), "-rspout", ",".join(rsps), cwd=d)
        assert r.returncode == rc, (run, r.stderr)
        seq: list[bytes] = []
        for q, s in zip(reqs, rsps):
            if (d / q).exists():
                seq.append((d / q).read_bytes())
                if (d / s).exists():
                    seq.append((d / s).read_bytes())
        assert seq, run
        messages[run] = seq
    return Captured(d, pki, k1, c1, ks, cs, k2, c2, messages)
