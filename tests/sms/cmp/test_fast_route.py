"""The fast CMP route answers exactly as the Flask route: same status, headers, CMP answer and
audit entry; it declines everything else to Flask before anything happened."""
from __future__ import annotations

from typing import Any

import pytest
from werkzeug.test import Client

from client_sdk import cmp
from client_sdk.cmp import builders
from sms.fastpath import FastPath
from tests.client_sdk.cmptools import ec_key, name

from .conftest import CT, REF, SECRET, CmpEnv


def _fast(app: Any) -> FastPath:
    assert isinstance(app.wsgi_app, FastPath)
    return app.wsgi_app


def _ir(env: CmpEnv, subject: str) -> bytes:
    body = cmp.IrBody((builders.cert_request(ec_key(), subject=name(subject)),))
    hdr = builders.request_header(recipient=env.issuing.certificate.subject, implicit_confirm=True)
    return cmp.protect_with_pbm(cmp.PKIMessage(hdr, body), SECRET.encode(), sender_kid=REF.encode(),
                                iteration_count=500).encode()


def _same_entry(a: dict[str, Any], b: dict[str, Any]) -> None:
    for k in ("actor", "action", "resource", "outcome", "status", "remote"):
        assert a[k] == b[k], k
    da, db = dict(a["detail"]), dict(b["detail"])
    assert da.pop("transaction_id") != db.pop("transaction_id")
    assert da == db


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("path", ["/.well-known/cmp", "/.well-known/cmp/p/test"])
def test_fast_and_flask_answer_an_ir_alike(env: CmpEnv, path: str) -> None:
    fast = _fast(env.app)
    flask_only = Client(fast.wsgi_app)
    served = fast.served
    r1 = env.client.post(path, data=_ir(env, "fast.example.com"), headers=CT)
    assert fast.served == served + 1
    e1 = env.svc.audit.entries()[-1]
    r2 = flask_only.post(path, data=_ir(env, "flask.example.com"), headers=CT,
                         environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert fast.served == served + 1
    e2 = env.svc.audit.entries()[-1]
    assert r1.status_code == r2.status_code == 200
    skip = ("X-Request-ID", "Content-Length")  # the DER lengths may differ by a byte or two
    assert [(k, v) for k, v in r1.headers.items() if k not in skip] == \
        [(k, v) for k, v in r2.headers.items() if k not in skip]
    assert int(r1.headers["Content-Length"]) == len(r1.data)
    for r in (r1, r2):
        msg = cmp.PKIMessage.decode(r.data)
        assert isinstance(msg.body, cmp.IpBody)
        cmp.verify_pbm(msg, SECRET.encode())
    _same_entry(e1, e2)
    assert e1["request_id"] == r1.headers["X-Request-ID"]
    assert e1["action"] == "cmp.ir" and e1["resource"] == "cmp/test" and e1["actor"] == f"cmp:test:{REF}"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_fast_route_declines_to_flask_before_doing_anything(env: CmpEnv) -> None:
    fast = _fast(env.app)
    c = env.client
    declined, served = fast.declined, fast.served
    before = env.cmp.transactions.count()
    r = c.post("/.well-known/cmp", data=_ir(env, "a.example.com"), headers={"Content-Type": "application/json"})
    assert r.status_code == 415
    r = c.post("/.well-known/cmp", data=b"", headers=CT)
    assert r.status_code == 400
    r = c.post("/.well-known/cmp", data=b"\x30" * (env.svc.settings.cmp_max_body_bytes + 1), headers=CT)
    assert r.status_code == 413
    r = c.post("/.well-known/cmp/p/nope", data=_ir(env, "b.example.com"), headers=CT)
    assert r.status_code == 404 and "nope" in r.get_json()["detail"]
    assert fast.declined - declined >= 3 and fast.served == served  # 413 may not reach it (no read)
    assert env.cmp.transactions.count() == before
    actions = [e["action"] for e in env.svc.audit.entries()[-4:]]
    assert actions == ["cmp.request"] * 4  # Flask's entries for its problem answers


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sdk_client_with_certconf_through_the_fast_route(env: CmpEnv) -> None:
    fast = _fast(env.app)

    class Direct:
        def send(self, request: bytes) -> bytes:
            r = env.client.post("/.well-known/cmp/p/test", data=request, headers=CT)
            assert r.status_code == 200
            return bytes(r.data)

    served = fast.served
    c = cmp.CmpClient(Direct(), recipient=env.issuing.certificate.subject, secret=SECRET.encode(),
                      reference=REF.encode(), pbm_iterations=500)
    got = c.ir(ec_key(), subject=name("conf.example.com"))
    assert not got.implicitly_confirmed and fast.served == served + 2
    assert [e["action"] for e in env.svc.audit.entries()[-2:]] == ["cmp.ir", "cmp.certConf"]
