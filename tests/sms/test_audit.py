"""Audit: every touching request is recorded; tampering is detected; no token in the log."""
from __future__ import annotations

import json

import pytest

from sqlalchemy import text

from sms.audit.service import AuditEvent


def test_requests_are_recorded_with_actor_action_outcome(client, root_headers, services):
    before = services.audit.entries(limit=1000)
    client.put("/v1/sys/policies/p1", json={"rules": [{"path": "a", "capabilities": ["read"]}]}, headers=root_headers)
    client.get("/v1/sys/policies/p1")  # unauthenticated: recorded too
    entries = services.audit.entries(after=before[-1]["seq"] if before else 0)
    write, anon = entries[-2], entries[-1]
    assert write["action"] == "policy.write" and write["resource"] == "sys/policies/p1"
    assert write["outcome"] == "ok" and write["status"] == 200 and write["actor"].startswith("token:")
    assert anon["outcome"] == "unauthenticated" and anon["actor"] == "anonymous"


def test_token_never_appears_in_audit(client, root_token, root_headers, services):
    created = client.post("/v1/auth/tokens", json={}, headers=root_headers).json
    client.get("/v1/auth/tokens/self", headers={"X-CSM-Token": created["token"]})
    services.audit.flush()
    with services.engine.connect() as c:
        dump = " ".join(str(r) for r in c.execute(text("SELECT * FROM audit_log")))
    assert created["token"] not in dump and root_token not in dump
    assert created["accessor"] in dump or "token:" in dump


def _fill(services, n=5):
    for i in range(n):
        services.audit.append(AuditEvent(f"token:t{i}", "secret.read", f"secrets/d/s{i}", "ok", 200))
        services.audit.flush()  # the journaled entry into the chain, as a batch (and MAC) of its own


def test_untouched_log_verifies(services):
    _fill(services)
    r = services.audit.verify()
    assert r.ok and r.entries >= 5


def test_edited_entry_is_detected(services):
    _fill(services)
    with services.engine.begin() as c:
        c.execute(text("UPDATE audit_log SET actor = 'token:someone-else' WHERE seq = 3"))
    r = services.audit.verify()
    assert not r.ok and r.first_bad_seq == 3 and "modified" in r.problem


def test_rewritten_chain_is_detected_by_the_token_mac(services):
    """An attacker who recomputes every hash still cannot forge the MAC held by the token."""
    import hashlib
    import json

    from sms.audit.service import _canonical, _row_event
    from sms.audit.models import AuditRow

    _fill(services)
    with services.sessions.begin() as s:
        rows = s.query(AuditRow).order_by(AuditRow.seq).all()
        prev = "0" * 64
        for r in rows:
            if r.seq == 2:
                r.resource = "secrets/d/forged"
            r.prev_hash = prev
            r.entry_hash = hashlib.sha256(_canonical(r.seq, r.ts, _row_event(r), prev)).hexdigest()
            prev = r.entry_hash
        s.execute(text("UPDATE audit_head SET entry_hash = :h"), {"h": prev})
    r = services.audit.verify()
    assert not r.ok and r.first_bad_seq == 2 and "MAC" in r.problem
    assert json  # keep import used


def test_deleted_entry_is_detected(services):
    _fill(services)
    with services.engine.begin() as c:
        c.execute(text("DELETE FROM audit_log WHERE seq = 2"))
    r = services.audit.verify()
    assert not r.ok and r.first_bad_seq == 3


def test_truncated_tail_is_detected(services):
    _fill(services)
    with services.engine.begin() as c:
        c.execute(text("DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)"))
    r = services.audit.verify()
    assert not r.ok and "head" in r.problem


# ---- group commit: batches, fail-closed, crash in the middle of a batch ------------------------
import multiprocessing  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402

from sms import db  # noqa: E402


def _count(services):
    services.audit.flush()  # journal (and on PostgreSQL the outbox) into the chain
    with services.engine.connect() as c:
        return c.execute(text("SELECT COUNT(*) FROM audit_log")).scalar_one()


def _head(services):
    services.audit.flush()
    with services.engine.connect() as c:
        return tuple(c.execute(text("SELECT seq, entry_hash FROM audit_head WHERE id = 1")).one())


def test_concurrent_appends_are_batched_with_one_mac_per_batch_and_the_chain_verifies(make_services, backend):
    services = make_services(backend, audit_sync="commit")  # every append waits for its batch's commit
    before = services.audit.group.batches, services.audit.group.items
    threads = [threading.Thread(target=_fill, args=(services, 10)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    batches = services.audit.group.batches - before[0]
    assert services.audit.group.items - before[1] == 80
    with services.engine.connect() as c:
        macs = c.execute(text("SELECT COUNT(*) FROM audit_log WHERE LENGTH(mac) > 0")).scalar_one()
        last_mac = c.execute(text("SELECT LENGTH(mac) FROM audit_log ORDER BY seq DESC LIMIT 1")).scalar_one()
    assert macs == batches and last_mac > 0  # one token MAC per batch, the last entry always carries one
    r = services.audit.verify()
    assert r.ok and r.entries == _count(services) >= 80


def test_a_tail_cut_inside_a_batch_is_detected(services):
    from sms.audit.service import AuditEvent as Ev

    services.audit._commit_batch([("2026-01-01T00:00:00.000000+00:00", Ev(f"token:b{i}", "secret.read", "s", "ok", 200))
                                  for i in range(3)])
    with services.engine.begin() as c:
        last = c.execute(text("SELECT MAX(seq) FROM audit_log")).scalar_one()
        prev = c.execute(text("SELECT entry_hash FROM audit_log WHERE seq = :s"), {"s": last - 1}).scalar_one()
        c.execute(text("DELETE FROM audit_log WHERE seq = :s"), {"s": last})
        c.execute(text("UPDATE audit_head SET seq = :s, entry_hash = :h"), {"s": last - 1, "h": prev})
    r = services.audit.verify()
    assert not r.ok and r.first_bad_seq == last - 2 and "not covered by a MAC" in r.problem


def _refuse_audit_inserts(services, on: bool):
    """Make every insert into the audit log and its outbox fail, or stop that."""
    with services.engine.begin() as c:
        if services.engine.dialect.name == "sqlite":
            for table in ("audit_pending", "audit_log"):
                c.execute(text(f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
                               "BEGIN SELECT RAISE(ABORT, 'full'); END" if on else f"DROP TRIGGER refuse_{table}"))
        elif on:
            c.execute(text("CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
                           "$$ BEGIN RAISE EXCEPTION 'full'; END $$"))
            # audit_pending before audit_log: the order a fold locks them in (a fold running
            # meanwhile waits instead of deadlocking with this DDL)
            for table in ("audit_pending", "audit_log"):
                c.execute(text(f"CREATE TRIGGER refuse_audit BEFORE INSERT ON {table} FOR EACH ROW "
                               "EXECUTE FUNCTION refuse_audit()"))
        else:
            for table in ("audit_pending", "audit_log"):
                c.execute(text(f"DROP TRIGGER refuse_audit ON {table}"))
            c.execute(text("DROP FUNCTION refuse_audit()"))


def test_every_request_of_a_batch_that_cannot_be_recorded_is_refused(make_services, backend):
    from sms.app import create_app

    services = make_services(backend, audit_sync="commit")
    app = create_app(services=services)
    root_headers = {"X-CSM-Token": services.auth.create_token(root=True)[0]}
    client = app.test_client()
    client.post("/v1/domains", json={"name": "fc"}, headers=root_headers)
    client.post("/v1/domains/fc/secrets", json={"name": "s", "values": {"v": 1}}, headers=root_headers)
    head, n = _head(services), _count(services)
    _refuse_audit_inserts(services, True)
    statuses: list[int] = []
    try:
        def read():
            c = app.test_client()
            for _ in range(5):
                statuses.append(c.get("/v1/domains/fc/secrets/s", headers=root_headers).status_code)

        threads = [threading.Thread(target=read) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        r = client.put("/v1/domains/fc/secrets/s", json={"values": {"v": 2}}, headers=root_headers)
        assert r.status_code == 503 and r.headers["Retry-After"]
    finally:
        _refuse_audit_inserts(services, False)
    assert statuses == [503] * 30  # fail-closed: nobody got a secret without a record
    assert _head(services) == head and _count(services) == n  # nothing half-written
    assert client.get("/v1/domains/fc/secrets/s", headers=root_headers).status_code == 200
    assert services.audit.verify().ok


def _crash_mid_batch(url: str, options: str, token_config) -> None:  # runs in a spawned process
    from hsm.keystore import KeyStore
    from sms.audit.service import AuditEvent as Ev
    from sms.audit.service import AuditLog, _item
    from sms.runtime import AUDIT_MAC_KEY

    engine = db.make_engine(url, **({"connect_args": {"options": options}} if options else {}))
    ks = KeyStore(token_config)
    ks.open()
    log = AuditLog(db.session_factory(engine), ks, AUDIT_MAC_KEY)
    items = [_item("2026-01-01T00:00:00.000000+00:00", Ev(f"token:crash{i}", "secret.read", "s", "ok", 200))
             for i in range(4)]

    def unit(tx):
        log._append_rows(tx, items)  # rows inserted and head moved, inside the open transaction ...
        os._exit(9)  # ... and the process dies before COMMIT

    db.writer(engine).run(unit)


def test_a_process_dying_in_the_middle_of_a_batch_leaves_a_verifiable_chain(services, token_config):
    _fill(services, 3)
    head, n = _head(services), _count(services)
    options = ""
    if services.engine.dialect.name == "postgresql":
        with services.engine.connect() as c:
            options = f"-csearch_path={c.execute(text('SELECT current_schema()')).scalar_one()}"
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_crash_mid_batch,
                    args=(services.engine.url.render_as_string(hide_password=False), options, token_config))
    p.start()
    p.join(60)
    assert p.exitcode == 9
    assert _head(services) == head and _count(services) == n  # none of the batch was committed
    assert services.audit.verify().ok
    _fill(services, 1)  # the database (and its write lock) are free again
    assert _count(services) == n + 1 and services.audit.verify().ok


def _secret(client, headers, name="s"):
    r = client.get(f"/v1/domains/wa/secrets/{name}", headers=headers)
    return r.status_code, (r.get_json() or {}).get("version"), (r.get_json() or {}).get("values")


def test_a_write_whose_audit_entry_cannot_be_written_is_rolled_back(app, root_headers, services):
    client = app.test_client()
    assert client.post("/v1/domains", json={"name": "wa"}, headers=root_headers).status_code == 201
    assert client.post("/v1/domains/wa/secrets", json={"name": "s", "values": {"v": 1}},
                       headers=root_headers).status_code == 201
    head, n = _head(services), _count(services)
    _refuse_audit_inserts(services, True)
    try:
        put = client.put("/v1/domains/wa/secrets/s", json={"values": {"v": 2}}, headers=root_headers)
        create = client.post("/v1/domains/wa/secrets", json={"name": "t", "values": {"v": 1}}, headers=root_headers)
        drop = client.delete("/v1/domains/wa?force=true", headers=root_headers)  # an ORM transaction
        assert [put.status_code, create.status_code, drop.status_code] == [503, 503, 503]
    finally:
        _refuse_audit_inserts(services, False)
    # No write's entry landed; the three refusals are on record (journaled, folded now).
    assert _count(services) == n + 3
    assert [(e["status"], e["outcome"]) for e in services.audit.entries(after=head[0])] == [(503, "error")] * 3
    assert _secret(client, root_headers) == (200, 1, {"v": 1})  # the version was not bumped
    assert _secret(client, root_headers, "t")[0] == 404
    assert services.audit.verify().ok


def test_each_committed_write_has_exactly_one_entry_and_the_chain_verifies(app, root_headers, services):
    client = app.test_client()
    client.post("/v1/domains", json={"name": "wa"}, headers=root_headers)
    client.post("/v1/domains/wa/secrets", json={"name": "s", "values": {"v": 0}}, headers=root_headers)
    n = _count(services)
    statuses: list[int] = []

    def write(i: int) -> None:
        c = app.test_client()
        for j in range(5):
            r = c.put("/v1/domains/wa/secrets/s", json={"values": {"v": i * 10 + j}},
                      headers={**root_headers, "X-Request-ID": f"w{i}-{j}"})
            statuses.append(r.status_code)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 30
    services.audit.flush()
    with services.engine.connect() as c:
        rows = c.execute(text("SELECT request_id, status, outcome, detail FROM audit_log WHERE seq > :n"),
                         {"n": n}).all()
        last_mac = c.execute(text("SELECT mac FROM audit_log ORDER BY seq DESC LIMIT 1")).scalar_one()
    assert sorted(r[0] for r in rows) == sorted(f"w{i}-{j}" for i in range(6) for j in range(5))
    assert {(r[1], r[2]) for r in rows} == {(200, "ok")}
    assert sorted(json.loads(r[3])["version"] for r in rows) == list(range(2, 32))  # the write's own detail
    assert last_mac and services.audit.verify().ok
    assert _secret(client, root_headers)[1] == 31


@pytest.mark.parametrize("case", ["unknown-field", "not-json", "wrong-type", "too-large", "bad-query"])
def test_requests_refused_before_their_guard_ran_are_audited_too(client, root_headers, services, case):
    """A body or query that does not parse or validate is refused before the route's guard
    runs (400, 413, 415, 422); the refusal is recorded like any other, with the caller."""
    assert client.post("/v1/domains", json={"name": "ad"}, headers=root_headers).status_code == 201
    before = services.audit.verify().entries
    big = services.settings.max_body_bytes + 10
    h = {**root_headers, "X-Request-ID": f"pre-{case}"}
    r = {
        "unknown-field": lambda: client.post("/v1/domains", json={"name": "x", "bogus": 1}, headers=h),
        "not-json": lambda: client.post("/v1/domains", data=b"{nope", content_type="application/json", headers=h),
        "wrong-type": lambda: client.put("/v1/domains/ad/secrets/s", data=b'{"values": {}}',
                                         content_type="text/plain", headers=h),
        "too-large": lambda: client.post("/v1/domains", data=b"x" * big, content_type="application/json", headers=h),
        "bad-query": lambda: client.delete("/v1/domains/ad", query_string={"force": "perhaps"}, headers=h),
    }[case]()
    assert r.status_code in (400, 413, 415, 422) and r.mimetype == "application/problem+json"
    report = services.audit.verify()
    assert report.ok and report.entries == before + 1
    entry = services.audit.entries(after=0, limit=100000)[-1]
    assert entry["status"] == r.status_code and entry["outcome"] == "error"
    assert entry["actor"] == services.auth.authenticate(root_headers["X-CSM-Token"]).label
    assert entry["request_id"] == r.headers["X-Request-ID"] == f"pre-{case}"
    assert entry["action"].startswith("secrets.domain.") or entry["action"] == "secrets.update"
    assert client.get("/v1/domains/ad", headers=root_headers).status_code == 200  # nothing changed


def test_an_anonymous_request_refused_before_its_guard_is_audited_as_anonymous(client, services):
    before = services.audit.verify().entries
    r = client.post("/v1/domains", data=b"{nope", content_type="application/json")
    assert r.status_code in (400, 401)
    entries = services.audit.entries(after=0, limit=100000)
    assert services.audit.verify().entries == before + 1 and entries[-1]["actor"] == "anonymous"
