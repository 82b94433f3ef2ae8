"""Fast routes (sms.fastpath, sms.secrets.fast) answer exactly as the Flask views do.

Two apps over the same services: one with the fast routes (the default), one with Flask
only. The same requests go to both; status, headers, body and audit entry must match, and the
fast app's counters tell whether it served the request itself or declined it to Flask.
"""
from __future__ import annotations

import json
import re
import threading

import pytest

from sms.app import create_app
from sms.fastpath import FastPath, new_request_id

VALUES = {"username": "app", "password": "pa55-<&>-wörd", "port": 5432, "tls": True, "ratio": 0.5}
# ASCII-only values are spliced into the answer as stored (no parse and re-encode): same bytes.
ASCII_VALUES = {"z": "last", "a": "first \\ \" \n\t</script>", "big": 10**18, "neg": -0.0, "f": 1e-7, "t": False}


@pytest.fixture
def apps(services):
    fast = create_app(services=services)
    assert isinstance(fast.wsgi_app, FastPath)
    slow = create_app(services=services)
    slow.wsgi_app = slow.wsgi_app.wsgi_app  # Flask only
    return fast, slow


@pytest.fixture
def dom(apps, root_headers, unique):
    client = apps[1].test_client()
    name = f"fp-{unique}"
    assert client.post("/v1/domains", json={"name": name}, headers=root_headers).status_code == 201
    assert client.post(f"/v1/domains/{name}/secrets", json={"name": "s", "values": VALUES},
                       headers=root_headers).status_code == 201
    assert client.post(f"/v1/domains/{name}/secrets", json={"name": "ascii", "values": ASCII_VALUES},
                       headers=root_headers).status_code == 201
    return name


def _last_entry(services):
    e = services.audit.entries(after=0, limit=100000)[-1]
    return {k: v for k, v in e.items() if k not in ("seq", "ts", "hash")}


def _both(apps, services, method, path, headers, **kw):
    """Send the same request (same X-Request-ID) to the fast and the Flask-only app."""
    out = []
    for app in apps:
        h = {**headers, "X-Request-ID": f"same-{path.count('/')}-{method}"}
        r = app.test_client().open(path, method=method, headers=h, **kw)
        out.append((r, _last_entry(services)))
    return out


def _counts(app):
    return app.wsgi_app.served, app.wsgi_app.declined


@pytest.mark.parametrize(("name", "values"), [("s", VALUES), ("ascii", ASCII_VALUES)])
def test_a_read_is_served_fast_with_flasks_exact_answer_and_audit_entry(apps, services, root_headers, dom,
                                                                         name, values):
    before = _counts(apps[0])
    (fr, fa), (sr, sa) = _both(apps, services, "GET", f"/v1/domains/{dom}/secrets/{name}", root_headers)
    assert _counts(apps[0]) == (before[0] + 1, before[1])  # served, not declined
    assert fr.status_code == sr.status_code == 200
    assert fr.data == sr.data and json.loads(fr.data)["values"] == values
    assert list(fr.headers.items()) == list(sr.headers.items())
    assert fr.headers["ETag"] == '"1"' and fr.headers["Cache-Control"] == "no-store"
    assert fa == sa and fa["action"] == "secrets.read" and fa["detail"] == {"method": "GET", "version": 1}
    assert services.audit.verify().ok


def test_a_replace_is_served_fast_with_one_audit_entry_like_flasks(apps, services, root_headers, dom):
    path = f"/v1/domains/{dom}/secrets/s"
    n0 = len(services.audit.entries(limit=100000))
    before = _counts(apps[0])
    (fr, fa), (sr, sa) = _both(apps, services, "PUT", path, root_headers, json={"values": {"v": "2"}, "cas": None})
    assert _counts(apps[0]) == (before[0] + 1, before[1])
    assert len(services.audit.entries(limit=100000)) == n0 + 2  # one entry per request, as with Flask
    assert (fr.status_code, sr.status_code) == (200, 200)
    assert (fr.json["version"], sr.json["version"]) == (2, 3)  # each wrote one version
    assert [k for k, _ in fr.headers.items()] == [k for k, _ in sr.headers.items()]
    assert fr.headers["ETag"] == '"2"' and set(fr.json) == set(sr.json)
    assert fa["detail"] == {"method": "PUT", "version": 2} and sa["detail"] == {"method": "PUT", "version": 3}
    assert {**fa, "detail": None} == {**sa, "detail": None}
    r = apps[0].test_client().put(path, json={"values": {"v": "4"}, "cas": 3}, headers=root_headers)
    assert r.status_code == 200 and r.json["version"] == 4
    assert apps[1].test_client().get(path, headers=root_headers).json["values"] == {"v": "4"}
    assert services.audit.verify().ok


@pytest.mark.parametrize("case", [
    "no-token", "bad-token", "denied", "missing-secret", "missing-domain", "bad-name", "version-query",
    "stale-cas", "if-match", "unknown-field", "cas-string", "values-list", "empty-values", "not-json",
    "form-body", "too-large",
])
def test_everything_but_the_plain_success_is_answered_by_flask(apps, services, root_headers, dom, case):
    path, method, headers, kw = f"/v1/domains/{dom}/secrets/s", "GET", dict(root_headers), {}
    if case == "no-token":
        headers = {}
    elif case == "bad-token":
        headers = {"X-CSM-Token": "csm.not-a-token"}
    elif case == "denied":
        services.auth.write_policy("fp-ro-" + dom, [{"path": "secrets/other/*", "capabilities": ["read"]}])
        tok, _ = services.auth.create_token(policies=["fp-ro-" + dom])
        headers = {"X-CSM-Token": tok}
    elif case == "missing-secret":
        path = f"/v1/domains/{dom}/secrets/nope"
    elif case == "missing-domain":
        path = "/v1/domains/nope-nope/secrets/s"
    elif case == "bad-name":
        path = f"/v1/domains/{dom}/secrets/a..b"
    elif case == "version-query":
        path += "?version=1"
    else:
        method = "PUT"
        body = {"values": {"v": 1}}
        if case == "stale-cas":
            body["cas"] = 0
        elif case == "if-match":
            headers["If-Match"] = '"0"'
        elif case == "unknown-field":
            body["extra"] = 1
        elif case == "cas-string":
            body["cas"] = "1"
        elif case == "values-list":
            body["values"] = [1]
        elif case == "empty-values":
            body["values"] = {}
        kw = {"json": body}
        if case == "not-json":
            kw = {"data": b"{not json", "content_type": "application/json"}
        elif case == "form-body":
            kw = {"data": json.dumps(body), "content_type": "text/plain"}
        elif case == "too-large":
            kw = {"data": json.dumps({"values": {"v": "x" * (services.settings.max_body_bytes + 10)}}),
                  "content_type": "application/json"}
    served = _counts(apps[0])[0]
    (fr, fa), (sr, sa) = _both(apps, services, method, path, headers, **kw)
    assert _counts(apps[0])[0] == served  # not served fast
    assert fr.status_code == sr.status_code and fr.status_code >= 200
    if case == "version-query":
        assert fr.status_code == 200 and fr.data == sr.data
    else:
        assert fr.status_code >= 400 and fr.mimetype == "application/problem+json"
        assert fr.json == sr.json
    assert fa == sa
    # nothing was written by the declined attempt
    r = apps[1].test_client().get(f"/v1/domains/{dom}/secrets/s", headers=root_headers)
    assert r.json["version"] == 1 and r.json["values"] == VALUES
    assert services.audit.verify().ok


def test_a_read_whose_audit_entry_cannot_be_written_gets_503(apps, services, root_headers, dom, monkeypatch):
    def refuse(ev):
        raise RuntimeError("disk full")

    monkeypatch.setattr(services.audit, "append", refuse)
    r = apps[0].test_client().get(f"/v1/domains/{dom}/secrets/s", headers=root_headers)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.mimetype == "application/problem+json" and "password" not in r.text and "pa55" not in r.text


def test_a_committed_write_is_never_repeated_through_flask(apps, services, root_headers, dom, monkeypatch):
    import sms.secrets.fast as fast

    def broken(m):
        raise RuntimeError("after the commit")

    monkeypatch.setattr(fast, "write_result", broken)
    path = f"/v1/domains/{dom}/secrets/s"
    r = apps[0].test_client().put(path, json={"values": {"v": "once"}}, headers=root_headers)
    assert r.status_code == 500 and r.mimetype == "application/problem+json"
    r = apps[1].test_client().get(path, headers=root_headers)
    assert r.json["version"] == 2 and r.json["values"] == {"v": "once"}  # written exactly once
    assert [e["action"] for e in services.audit.entries(limit=100000)].count("secrets.update") == 1


def test_fast_routes_can_be_switched_off(make_services):
    svc = make_services("sqlite", fast_routes=False)
    assert not isinstance(create_app(services=svc).wsgi_app, FastPath)


def test_request_ids_are_unique_and_shaped_like_before():
    ids: list[str] = []

    def take():
        ids.extend(new_request_id() for _ in range(2000))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == len(ids) == 8000
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


def test_a_forked_child_gets_its_own_request_id_prefix_and_connections(services):
    import os

    from sms import db

    db.read_one(services.engine, "SELECT 1")  # this thread now keeps a read connection
    db.writer(services.engine).run(lambda tx: tx.one("SELECT 1"))
    parent = new_request_id()[:8]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            fresh = getattr(db._READERS, "kept", None) is None and db.writer(services.engine)._conn is None
            ok = fresh and new_request_id()[:8] != parent and db.read_one(services.engine, "SELECT 7")[0] == 7
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    assert new_request_id()[:8] == parent and db.read_one(services.engine, "SELECT 1")[0] == 1
