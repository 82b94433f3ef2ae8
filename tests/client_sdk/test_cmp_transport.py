"""HttpTransport's connection handling against a local keep-alive HTTP/1.1 server that counts
TCP connections: complete responses reuse one connection, refused ones close theirs at once."""
from __future__ import annotations

import http.server
import ipaddress
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client_sdk.cmp.client import HttpTransport
from client_sdk.cmp.errors import TransportError


@dataclass
class Counting:
    url: str
    opened: list[object] = field(default_factory=list)
    closed: list[object] = field(default_factory=list)
    answer: tuple[str, int] = ("application/pkixcmp", 50)  # content type, body size

    def wait_all_closed(self, timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.closed) == len(self.opened):
                return True
            time.sleep(0.01)
        return False


@pytest.fixture
def server() -> Iterator[Counting]:
    state = Counting("")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def setup(self) -> None:
            super().setup()
            state.opened.append(self.client_address)

        def finish(self) -> None:
            super().finish()
            state.closed.append(self.client_address)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            ctype, size = state.answer
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.write(b"\x30" * size)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{srv.server_address[1]}/.well-known/cmp"
    yield state
    srv.shutdown()
    srv.server_close()


def test_complete_responses_reuse_one_connection(server: Counting) -> None:
    t = HttpTransport(server.url, max_response_size=100)
    for _ in range(5):
        assert t.send(b"req") == b"\x30" * 50
    server.answer = ("application/problem+json", 60)  # a small error page is read and its connection kept
    with pytest.raises(TransportError, match="content type"):
        t.send(b"req")
    server.answer = ("application/pkixcmp", 50)
    t.send(b"req")
    assert len(server.opened) == 1
    t.close()
    assert server.wait_all_closed()


def test_an_oversized_response_closes_its_connection_at_once(server: Counting) -> None:
    server.answer = ("application/pkixcmp", 5000)
    t = HttpTransport(server.url, max_response_size=100)
    for _ in range(3):
        with pytest.raises(TransportError, match="exceeds") as caught:
            t.send(b"req")
        # closed while the exception (and the frame that held the response) is still alive
        assert server.wait_all_closed(), (server.opened, server.closed)
        del caught
    assert len(server.opened) == 3
    t.close()


def test_a_kept_alive_connection_the_server_dropped_is_replaced_once() -> None:
    """Like openssl's mock server: the answer says nothing of closing, but the server drops the
    connection soon after; the next message, already sent on it, is reset. The transport sends
    it again once on a new connection (it was never answered)."""
    served: list[int] = []

    class Dropping(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            served.append(1)
            self.send_response(200)
            self.send_header("Content-Type", "application/pkixcmp")
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"\x30\x01\x00")
            self.wfile.flush()
            time.sleep(0.3)  # the client has sent its next message on this connection by now
            self.close_connection = True  # dropped unread: the peer sees a reset

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dropping)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        t = HttpTransport(f"http://127.0.0.1:{srv.server_address[1]}/.well-known/cmp")
        for _ in range(3):
            assert t.send(b"req") == b"\x30\x01\x00"
        assert len(served) == 3  # each message answered once
        t.close()
    finally:
        srv.shutdown()
        srv.server_close()


def test_verify_with_a_ca_file_holds_when_the_environment_names_another_bundle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE (set in many container images) override a session's
    verify; the transport passes its own on every request, so the CA the caller names is used."""
    import datetime as dt
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/pkixcmp")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"\x30\x00")

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "ca.pem", tmp_path / "key.pem")
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        other_key = ec.generate_private_key(ec.SECP256R1())  # a bundle without our CA, as the system's
        other = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(other_key.public_key())
                 .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
                 .not_valid_after(now + dt.timedelta(hours=1)).sign(other_key, hashes.SHA256()))
        (tmp_path / "other.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM))
        for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            monkeypatch.setenv(var, str(tmp_path / "other.pem"))
        url = f"https://127.0.0.1:{srv.server_address[1]}/.well-known/cmp"
        t = HttpTransport(url, verify=str(tmp_path / "ca.pem"))
        assert t.send(b"\x30\x00") == b"\x30\x00"
        with pytest.raises(TransportError, match="TLS"):
            HttpTransport(url).send(b"\x30\x00")  # the default (the environment's bundle) does not know it
    finally:
        srv.shutdown()
        srv.server_close()
