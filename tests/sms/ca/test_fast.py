"""The fast CA sign route (sms.ca.fast) answers exactly as the Flask view does, and declines
every other case to it.

Two apps over the same services: one with the fast route (the default), one with Flask only.
The same requests go to both; status, headers, body (up to the serial and signature of a new
certificate) and audit entry must match, and the fast route's counters tell whether it served
the request itself or declined it to Flask.
"""
from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509

from ca import CertificateQuery
from hsm import KeyType
from sms.app import create_app
from sms.fastpath import FastPath
from sms.ca.wiring import ca_store
from tests.ca.conftest import leaf_key, make_csr, name

from .helpers import create_intermediate, create_root, load_chain


def _sign_fast(app: Any) -> FastPath:
    assert isinstance(app.wsgi_app, FastPath)
    return app.wsgi_app


@pytest.fixture
def apps(services: Any) -> tuple[Any, Any]:
    fast = create_app(services=services)
    slow = create_app(services=services)
    slow.wsgi_app = _sign_fast(slow).wsgi_app  # Flask only
    return fast, slow


@pytest.fixture
def cas(apps: Any, root_headers: dict[str, str], unique: str) -> tuple[str, str]:
    client = apps[1].test_client()
    root, sub = f"fr-{unique}", f"fs-{unique}"
    create_root(client, root_headers, root)
    create_intermediate(client, root_headers, sub, root)
    return root, sub


def _entry(services: Any) -> dict[str, Any]:
    e = services.audit.entries(after=0, limit=100000)[-1]
    return {k: v for k, v in e.items() if k not in ("seq", "ts", "hash")}


def _post(app: Any, path: str, body: bytes, headers: dict[str, str], rid: str,
          content_type: str = "application/pkcs10") -> Any:
    return app.test_client().post(path, data=body, headers={**headers, "Content-Type": content_type,
                                                            "X-Request-ID": rid})


def _both(apps: Any, services: Any, path: str, body: bytes, headers: dict[str, str], rid: str,
          **kw: Any) -> list[tuple[Any, dict[str, Any]]]:
    out = []
    for app in apps:
        r = _post(app, path, body, headers, rid, **kw)
        out.append((r, _entry(services)))
    return out


def _counts(app: Any) -> tuple[int, int]:
    sf = _sign_fast(app)
    return sf.served, sf.declined


@pytest.mark.parametrize("which", ["root", "sub"])
def test_a_signing_is_served_fast_with_flasks_answer_and_audit_entry(apps: Any, services: Any,
                                                                      root_headers: dict[str, str],
                                                                      cas: tuple[str, str], which: str) -> None:
    ca = cas[0] if which == "root" else cas[1]
    csr = make_csr(name("fast.example.com"), dns=["fast.example.com"])
    before = _counts(apps[0])
    (fast, fast_entry), (slow, slow_entry) = _both(apps, services, f"/v1/ca/{ca}/sign?profile=tls-server", csr,
                                                   root_headers, "same-sign")
    assert _counts(apps[0]) == (before[0] + 1, before[1])
    assert fast.status_code == slow.status_code == 201, fast.get_data(as_text=True)
    fast_chain, slow_chain = load_chain(fast.data), load_chain(slow.data)
    assert len(fast_chain) == len(slow_chain) == (1 if which == "root" else 2)
    assert fast_chain[1:] == slow_chain[1:]
    a, b = fast_chain[0], slow_chain[0]
    assert a.serial_number != b.serial_number
    assert (a.subject, a.issuer, list(a.extensions)) == (b.subject, b.issuer, list(b.extensions))
    assert a.public_key() == b.public_key()
    for r, cert in ((fast, a), (slow, b)):
        assert r.headers["X-Certificate-Serial"] == f"{cert.serial_number:x}"
        assert r.headers["Location"] == f"/v1/ca/{ca}/certs/{cert.serial_number:x}"
    skip = ("Location", "X-Certificate-Serial", "Content-Length")
    assert [(k, v) for k, v in fast.headers if k not in skip] == [(k, v) for k, v in slow.headers if k not in skip]
    assert fast_entry["detail"].pop("serial") == f"{a.serial_number:x}"
    assert slow_entry["detail"].pop("serial") == f"{b.serial_number:x}"
    assert fast_entry == slow_entry and fast_entry["status"] == 201 and fast_entry["action"] == "ca.sign"
    # in the inventory, counted
    got = apps[1].test_client().get(f"/v1/ca/{ca}/certs/{a.serial_number:x}", headers=root_headers)
    assert got.status_code == 200 and got.get_json()["profile"] == "tls-server"


def test_every_other_case_is_declined_to_flask_which_answers_it(apps: Any, services: Any,
                                                                 root_headers: dict[str, str],
                                                                 cas: tuple[str, str]) -> None:
    _root, ca = cas
    good = make_csr(name("d.example.com"), dns=["d.example.com"])
    token, _info = services.auth.create_token(policies=[], display_name="nobody")
    cases: list[tuple[str, str, bytes, dict[str, str], dict[str, Any], int]] = [
        ("malformed CSR", "profile=tls-server", b"not a csr", root_headers, {}, 400),
        ("profile violation", "profile=tls-server", make_csr(name("d.example.com"), key=leaf_key(KeyType.EC_P384), dns=["bad name"]), root_headers, {}, 422),
        ("unknown profile", "profile=nope", good, root_headers, {}, 404),
        ("no token", "profile=tls-server", good, {}, {}, 401),
        ("unknown token", "profile=tls-server", good, {"X-CSM-Token": "s.nope"}, {}, 401),
        ("denied", "profile=tls-server", good, {"X-CSM-Token": token}, {}, 403),
        ("no profile", "", good, root_headers, {}, 400),
        ("wrong type", "profile=tls-server", good, root_headers, {"content_type": "application/x-thing"}, 415),
    ]
    for label, query, body, headers, kw, status in cases:
        before = _counts(apps[0])
        n = len(services.audit.entries(after=0, limit=100000))
        (fast, fast_entry), (slow, slow_entry) = _both(apps, services, f"/v1/ca/{ca}/sign?{query}", body, headers,
                                                       f"same-{label.replace(' ', '-')}", **kw)
        assert _counts(apps[0]) == (before[0], before[1] + 1), label
        assert fast.status_code == slow.status_code == status, (label, fast.get_data(as_text=True))
        assert fast.get_json() == slow.get_json(), label
        assert fast_entry == slow_entry, label
        assert len(services.audit.entries(after=0, limit=100000)) == n + 2, label  # one entry per request

    # options the fast route leaves to Flask: they are served there, as before
    for label, query, extra in (("validity", "profile=tls-server&validity_days=5", {}),
                                ("format", "profile=tls-server&format=der", {}),
                                ("accept", "profile=tls-server", {"Accept": "application/pkix-cert"})):
        before = _counts(apps[0])
        r = _post(apps[0], f"/v1/ca/{ca}/sign?{query}", good, {**root_headers, **extra}, f"opt-{label}")
        assert r.status_code == 201, (label, r.get_data(as_text=True))
        assert _counts(apps[0]) == (before[0], before[1] + 1), label
        if label == "validity":
            cert = load_chain(r.data)[0]
            assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 5
        else:
            assert r.mimetype == "application/pkix-cert"
            x509.load_der_x509_certificate(r.data)


def test_a_failed_audit_write_stores_no_certificate(apps: Any, services: Any, root_headers: dict[str, str],
                                                    cas: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry commits with the certificate: when it cannot be added nothing is issued, and
    the request goes to Flask, which refuses it the same way."""
    _root, ca = cas
    from tests.sms.test_audit import _refuse_audit_inserts

    store = ca_store(services)
    issued_before = len(store.search(CertificateQuery(ca_name=ca, limit=1000)))
    _refuse_audit_inserts(services, True)  # the audit log (and PostgreSQL's outbox) refuse every insert
    try:
        r = _post(apps[0], f"/v1/ca/{ca}/sign?profile=tls-server",
                  make_csr(name("e.example.com"), dns=["e.example.com"]), root_headers, "audit-down")
    finally:
        _refuse_audit_inserts(services, False)
    assert r.status_code == 503
    assert len(store.search(CertificateQuery(ca_name=ca, limit=1000))) == issued_before


def test_a_body_over_the_apps_limit_is_left_to_flask(make_services: Any, backend: str, unique: str) -> None:
    services = make_services(backend, max_body_bytes=2048)
    token, _ = services.auth.create_token(root=True, display_name="test-root")
    root_headers = {"X-CSM-Token": token}
    app = create_app(services=services)
    client = app.test_client()
    create_root(client, root_headers, f"lim-{unique}")
    body = make_csr(name("l.example.com"), dns=["l.example.com"]) + b"\n" * 2048  # still a valid PEM CSR
    before = _counts(app)
    r = _post(app, f"/v1/ca/lim-{unique}/sign?profile=tls-server", body, root_headers, "too-big")
    assert r.status_code == 413
    assert _counts(app) == (before[0], before[1] + 1)
