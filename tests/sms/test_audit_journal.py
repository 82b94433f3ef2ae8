"""The audit journal (audit_sync = "journal", the default): entries not committed with a write
are written to the worker's journal file before the answer and folded into the hash chain in
the background. Nothing is lost, nothing is folded twice, a dead worker's journal is folded by
another process, and the chain verifies."""
from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from sms import db
from sms.audit.journal import JournalRefused
from sms.audit.service import AuditEvent, AuditLog
from sms.runtime import AUDIT_MAC_KEY


def _ev(i: int, who: str = "t") -> AuditEvent:
    return AuditEvent(f"token:{who}{i}", "secret.read", f"secrets/d/{who}{i}", "ok", 200, request_id=f"{who}-{i}")


def _request_ids(services) -> list[str]:
    with services.engine.connect() as c:
        return [r[0] for r in c.execute(text("SELECT request_id FROM audit_log ORDER BY seq"))]


def _journal_dir(services) -> Path:
    return services.settings.data_path / "audit-journal"


def _log(services, **options) -> AuditLog:
    """A second AuditLog on the same database and journal directory (another 'worker')."""
    return AuditLog(services.sessions, services.keystore, AUDIT_MAC_KEY, journal_dir=_journal_dir(services), **options)


def _wait_for(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_an_entry_is_in_the_journal_file_at_once_and_in_the_chain_after_the_fold_interval(services):
    services.audit.append(_ev(1))
    files = list(_journal_dir(services).glob("*.journal"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"
    line = json.loads(files[0].read_bytes().splitlines()[-1].split(b"\t")[0])
    assert line[1:4] == ["token:t1", "secret.read", "secrets/d/t1"] and line[6] == "t-1"
    # the worker's fold thread (every 0.2 s) moves it into the chain, MAC'd
    assert _wait_for(lambda: "t-1" in _request_ids(services))
    with services.engine.connect() as c:
        assert c.execute(text("SELECT LENGTH(mac) FROM audit_log ORDER BY seq DESC LIMIT 1")).scalar_one() > 0
    assert services.audit.verify().ok


def test_entries_of_a_worker_keep_their_order_around_its_writes(client, root_headers, services):
    assert client.post("/v1/domains", json={"name": "jo"}, headers=root_headers).status_code == 201
    assert client.post("/v1/domains/jo/secrets", json={"name": "s", "values": {"v": 1}},
                       headers=root_headers).status_code == 201
    h = {**root_headers}
    assert client.get("/v1/domains/jo/secrets/s", headers={**h, "X-Request-ID": "o-read1"}).status_code == 200
    assert client.get("/v1/domains/jo/secrets/nope", headers={**h, "X-Request-ID": "o-miss"}).status_code == 404
    assert client.put("/v1/domains/jo/secrets/s", json={"values": {"v": 2}},
                      headers={**h, "X-Request-ID": "o-write"}).status_code == 200
    assert client.get("/v1/domains/jo/secrets/s", headers={**h, "X-Request-ID": "o-read2"}).status_code == 200
    ids = [e["request_id"] for e in services.audit.entries(limit=100000)]
    # the two journaled entries were folded into the write's own transaction, ahead of it
    assert [i for i in ids if i.startswith("o-")] == ["o-read1", "o-miss", "o-write", "o-read2"]
    assert services.audit.verify().ok


def _worker(url: str, options: str, token_config, journal_dir: str, n: int, mode: str, conn) -> None:
    """Another csm process (spawned): journals ``n`` entries, then dies or waits for the parent."""
    from hsm.keystore import KeyStore

    engine = db.make_engine(url, **({"connect_args": {"options": options}} if options else {}))
    ks = KeyStore(token_config)
    ks.open()
    log = AuditLog(db.session_factory(engine), ks, AUDIT_MAC_KEY, journal_dir=Path(journal_dir), fold_interval=3600)
    for i in range(n):
        log.append(_ev(i, "w"))
    if mode == "die":
        os._exit(9)  # nothing folded, no atexit: the journal is left behind
    conn.send("written")
    conn.recv()  # the parent folded our live journal meanwhile
    log.flush()  # our own fold must not add them again
    log.close()
    conn.send("closed")


def _spawn(services, token_config, n: int, mode: str):
    options = ""
    if services.engine.dialect.name == "postgresql":
        with services.engine.connect() as c:
            options = f"-csearch_path={c.execute(text('SELECT current_schema()')).scalar_one()}"
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_worker, args=(services.engine.url.render_as_string(hide_password=False), options,
                                          token_config, str(_journal_dir(services)), n, mode, child))
    p.start()
    return p, parent


def test_a_dead_workers_journal_is_folded_once_by_another_process_and_deleted(services, token_config):
    services.audit.append(_ev(0))  # this process has a live journal of its own
    p, _ = _spawn(services, token_config, 25, "die")
    p.join(60)
    assert p.exitcode == 9
    left = [f for f in _journal_dir(services).glob("*.journal") if f"-{p.pid}-" in f.name]
    assert len(left) == 1 and len(left[0].read_bytes().splitlines()) == 25
    services.audit.flush()
    services.audit.flush()  # twice: nothing is folded again
    ids = _request_ids(services)
    assert sorted(i for i in ids if i.startswith("w-")) == sorted(f"w-{i}" for i in range(25))
    assert not left[0].exists()  # finished and deleted; our own journal stays
    assert any(f"-{os.getpid()}-" in f.name for f in _journal_dir(services).glob("*.journal"))
    with services.engine.connect() as c:
        assert c.execute(text("SELECT folded FROM audit_journals WHERE name = :n"),
                         {"n": left[0].name}).scalar_one() == -1
    assert services.audit.verify().ok


def test_a_live_journal_folded_by_two_processes_lands_once(services, token_config):
    p, conn = _spawn(services, token_config, 40, "live")
    try:
        assert conn.poll(60) and conn.recv() == "written"
        services.audit.flush()  # folds the other worker's live journal (it holds its lock)
        assert sorted(i for i in _request_ids(services) if i.startswith("w-")) == sorted(f"w-{i}" for i in range(40))
        conn.send("go")
        assert conn.poll(60) and conn.recv() == "closed"
    finally:
        p.join(60)
    ids = [i for i in _request_ids(services) if i.startswith("w-")]
    assert len(ids) == 40  # the owner's own fold and close added nothing
    assert not [f for f in _journal_dir(services).glob("*.journal") if f"-{p.pid}-" in f.name]
    assert services.audit.verify().ok


def _refuse_audit_inserts(services, on: bool) -> None:
    from tests.sms.test_audit import _refuse_audit_inserts as refuse

    refuse(services, on)


def test_appends_are_refused_once_folding_stalls_and_nothing_is_lost(services):
    log = _log(services, fold_interval=0.05, max_lag=0.6)
    try:
        _refuse_audit_inserts(services, True)
        try:
            log.append(_ev(0, "s"))
            time.sleep(0.3)
            log.append(_ev(1, "s"))  # still within the lag: journaled, answered
            assert not [i for i in _request_ids(services) if i.startswith("s-")]
            time.sleep(0.6)
            with pytest.raises(JournalRefused, match="not folded"):
                log.append(_ev(2, "s"))  # folding has failed for too long: the request is refused
        finally:
            _refuse_audit_inserts(services, False)
        assert _wait_for(lambda: len([i for i in _request_ids(services) if i.startswith("s-")]) == 2)
        log.append(_ev(3, "s"))  # caught up: appends are taken again
        log.flush()
        assert [i for i in _request_ids(services) if i.startswith("s-")] == ["s-0", "s-1", "s-3"]
        assert services.audit.verify().ok
    finally:
        log.close()


def test_appends_are_refused_when_the_backlog_is_full(services):
    log = _log(services, fold_interval=3600, max_backlog=600)
    try:
        with pytest.raises(JournalRefused, match="backlog"):
            for i in range(50):
                log.append(_ev(i, "b"))
        taken = len((_journal_dir(services) / next(iter(log.journal.pending_files()))[0]).read_bytes().splitlines())
        assert 1 < taken < 50
        log.flush()
        assert len([i for i in _request_ids(services) if i.startswith("b-")]) == taken
        log.append(_ev(99, "b"))  # room again
    finally:
        log.close()
    assert services.audit.verify().ok


def test_a_large_journal_is_rotated_and_the_old_file_finished(services):
    log = _log(services, fold_interval=3600, rotate_bytes=1000)
    try:
        for i in range(12):
            log.append(_ev(i, "r"))
        first = log.journal.pending_files()[0][0]
        log.flush()  # folds, then starts a new file and finishes the old one
        for i in range(12, 15):
            log.append(_ev(i, "r"))
        second = log.journal.pending_files()[0][0]
        assert second != first and not (_journal_dir(services) / first).exists()
        log.flush()
    finally:
        log.close()
    assert not (_journal_dir(services) / second).exists()  # close finishes and deletes
    assert [i for i in _request_ids(services) if i.startswith("r-")] == [f"r-{i}" for i in range(15)]
    assert services.audit.verify().ok


def test_a_damaged_journal_line_is_kept_as_evidence(services, token_config):
    p, _ = _spawn(services, token_config, 3, "die")
    p.join(60)
    path = next(f for f in _journal_dir(services).glob("*.journal") if f"-{p.pid}-" in f.name)
    with path.open("ab") as f:
        f.write(b'["forged", 1]\n{"half": ')  # a line csm never writes, and a cut-off tail
    services.audit.flush()
    entries = services.audit.entries(limit=100000)
    assert [e["request_id"] for e in entries if e["request_id"].startswith("w-")] == ["w-0", "w-1", "w-2"]
    bad = [e for e in entries if e["action"] == "audit.journal"]
    assert len(bad) == 1 and bad[0]["outcome"] == "error" and bad[0]["resource"] == f"audit-journal/{path.name}"
    assert services.audit.verify().ok


def test_commit_mode_answers_only_after_the_entry_is_committed(make_services, backend):
    services = make_services(backend, audit_sync="commit")
    seq = services.audit.append(_ev(7, "c"))
    assert isinstance(seq, int) and "c-7" in _request_ids(services)  # in the chain when append returns
    assert not _journal_dir(services).exists()


def test_journals_of_a_killed_server_are_folded_by_the_next_start(tmp_path):
    """`csm serve` killed with SIGKILL (no worker folds or deletes anything at exit): the next
    start folds what was left, before any request, and nothing lands twice."""
    import signal
    import sqlite3

    from tests.sms.served import Served, cli

    data = tmp_path / "csm-data"
    srv = Served(data, "--audit-fold-ms", "60000", workers=2).start()  # folds only at start and exit
    try:
        assert srv.post("/v1/domains", json={"name": "k"}).status_code == 201
        assert srv.post("/v1/domains/k/secrets", json={"name": "s", "values": {"v": 1}}).status_code == 201
        for i in range(20):
            assert srv.get("/v1/domains/k/secrets/s", headers={"X-Request-ID": f"kill-{i}"}).status_code == 200
        left = list((data / "audit-journal").glob("*.journal"))
        assert left and sum(len(f.read_bytes().splitlines()) for f in left) >= 20
    finally:
        assert srv.proc is not None
        os.killpg(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(20)
        srv.stop()

    def killed_reads() -> list[str]:
        with sqlite3.connect(data / "csm.db") as c:
            return [r[0] for r in c.execute("SELECT request_id FROM audit_log WHERE request_id LIKE 'kill-%'")]

    assert killed_reads() == []  # only in the journals so far
    with Served(data, workers=2) as again:
        assert _wait_for(lambda: not any(f in left for f in (data / "audit-journal").glob("*.journal")), 20)
        assert sorted(killed_reads()) == sorted(f"kill-{i}" for i in range(20))
        assert cli(["audit", "verify"], again.env).returncode == 0


def _pg_app(make_services, **journal_options):
    from sms.app import create_app

    services = make_services("postgres")
    if journal_options:
        services.audit.close()
        services.audit = _log(services, **journal_options)
    token, _ = services.auth.create_token(root=True)
    return services, create_app(services=services).test_client(), {"X-CSM-Token": token}


@pytest.mark.postgres
def test_postgres_writes_commit_their_entries_into_the_outbox_and_the_fold_links_them(make_services):
    services, client, h = _pg_app(make_services)
    assert client.post("/v1/domains", json={"name": "ob"}, headers={**h, "X-Request-ID": "ob-1"}).status_code == 201
    with services.engine.connect() as c:
        pending = [r[0] for r in c.execute(text("SELECT request_id FROM audit_pending"))]
    assert pending == ["ob-1"] and "ob-1" not in _request_ids(services)  # committed with the write, not linked yet
    services.audit.flush()
    with services.engine.connect() as c:
        assert c.execute(text("SELECT COUNT(*) FROM audit_pending")).scalar_one() == 0
    assert _request_ids(services).count("ob-1") == 1
    assert services.audit.verify().ok


@pytest.mark.postgres
def test_postgres_writes_are_refused_once_the_fold_has_failed_for_too_long(make_services):
    services, client, h = _pg_app(make_services, fold_interval=0.05, max_lag=0.5)
    services.audit.start()
    with services.engine.begin() as c:  # the chain refuses inserts; the outbox still takes them
        c.execute(text("CREATE FUNCTION refuse_chain() RETURNS trigger LANGUAGE plpgsql AS "
                       "$$ BEGIN RAISE EXCEPTION 'full'; END $$"))
        c.execute(text("CREATE TRIGGER refuse_chain BEFORE INSERT ON audit_log FOR EACH ROW "
                       "EXECUTE FUNCTION refuse_chain()"))
    try:
        assert client.post("/v1/domains", json={"name": "st1"}, headers=h).status_code == 201
        time.sleep(0.8)
        refused = client.post("/v1/domains", json={"name": "st2"}, headers=h)
        assert refused.status_code == 503 and refused.headers["Retry-After"]
    finally:
        with services.engine.begin() as c:
            c.execute(text("DROP TRIGGER refuse_chain ON audit_log"))
            c.execute(text("DROP FUNCTION refuse_chain()"))
    assert _wait_for(lambda: not services.audit.journal.stalled())
    assert client.post("/v1/domains", json={"name": "st3"}, headers=h).status_code == 201
    assert client.get("/v1/domains/st2", headers=h).status_code == 404  # the refused write left nothing
    assert services.audit.verify().ok


def test_concurrent_reads_and_writes_while_folding_record_every_request_exactly_once(make_services, backend):
    """8 threads of one process mixing journaled reads and writes (outbox) while the fold thread
    runs every 20 ms."""
    import threading

    from sms.app import create_app

    services = make_services(backend)
    services.audit.close()
    services.audit = _log(services, fold_interval=0.02)
    app = create_app(services=services)
    h = {"X-CSM-Token": services.auth.create_token(root=True)[0]}
    c = app.test_client()
    assert c.post("/v1/domains", json={"name": "mix"}, headers=h).status_code == 201
    for t in range(8):
        assert c.post("/v1/domains/mix/secrets", json={"name": f"s{t}", "values": {"v": 0}},
                      headers=h).status_code == 201
    statuses: list[int] = []
    deadline = time.monotonic() + 30

    def work(t: int) -> None:
        client = app.test_client()
        for i in range(15):
            if time.monotonic() > deadline:
                return
            rid = {**h, "X-Request-ID": f"mix-{t}-{i}"}
            if i % 3 == 2:
                r = client.put(f"/v1/domains/mix/secrets/s{t}", json={"values": {"v": i}}, headers=rid)
            else:
                r = client.get(f"/v1/domains/mix/secrets/s{t}", headers=rid)
            statuses.append(r.status_code)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert statuses == [200] * 120
    ids = [i for i in (e["request_id"] for e in services.audit.entries(limit=100000)) if i.startswith("mix-")]
    assert sorted(ids) == sorted(f"mix-{t}-{i}" for t in range(8) for i in range(15))  # each once
    for t in range(8):  # a thread's own requests keep their order in the chain
        mine = [i for i in ids if i.startswith(f"mix-{t}-")]
        assert mine == [f"mix-{t}-{i}" for i in range(15)], mine
    assert services.audit.verify().ok


def test_a_served_worker_folds_the_outbox_of_writes_without_any_read(tmp_path):
    """Writes only (their entries go to the outbox, not the journal): the workers' fold threads
    run from the start and link them within the fold interval, with no read or verify."""
    import sqlite3

    from tests.sms.served import Served

    data = tmp_path / "csm-data"
    with Served(data, workers=2) as srv:
        for n in range(6):
            assert srv.post("/v1/domains", json={"name": f"w{n}"}, headers={"X-Request-ID": f"wo-{n}"}
                            ).status_code == 201

        def linked() -> list[str]:
            with sqlite3.connect(data / "csm.db") as c:
                return [r[0] for r in c.execute("SELECT request_id FROM audit_log WHERE request_id LIKE 'wo-%'")]

        assert _wait_for(lambda: len(linked()) == 6, 5), linked()
        with sqlite3.connect(data / "csm.db") as c:
            assert c.execute("SELECT COUNT(*) FROM audit_pending").fetchone()[0] == 0


def test_close_waits_for_a_fold_under_way_then_folds_what_is_left(client, root_headers, services):
    """Closing (worker exit, or a test dropping its database) must not leave a fold running
    against the database: the PostgreSQL suite once deadlocked dropping a schema under one."""
    j = services.audit.journal
    inner = j._fold
    in_fold, release = threading.Event(), threading.Event()

    def slow_fold(files, final):
        in_fold.set()
        release.wait(10)
        return inner(files, final)

    j._fold = slow_fold
    # a write only: its entry goes to the outbox, no journal file is opened
    assert client.post("/v1/domains", json={"name": "cl"}, headers={**root_headers, "X-Request-ID": "cl-1"}).status_code == 201
    assert not list(_journal_dir(services).glob("*.journal"))
    assert in_fold.wait(10)  # the fold thread is inside a fold
    closer = threading.Thread(target=services.audit.close)
    closer.start()
    time.sleep(0.3)
    assert closer.is_alive()  # close waits for it
    release.set()
    closer.join(15)
    assert not closer.is_alive() and not j._thread.is_alive()
    assert _request_ids(services).count("cl-1") == 1
    with services.engine.connect() as c:
        assert c.execute(text("SELECT COUNT(*) FROM audit_pending")).scalar_one() == 0


_TRICKY = [
    AuditEvent("token:ä\u2028", "secrets.read", "secrets/d/\\x00é", "ok", 200, "rid", "::1",
               {"z": [1, 2.5, None], "a": {"y": "ü\t\n\"", "b": True}, "method": "GET"}),
    AuditEvent("", "", "", "denied", 403),
    AuditEvent("cert:CN=x\"y", "cmp.ir", "cmp/p/\U0001F600", "error", 500, "r" * 64, "10.0.0.1",
               {"n": -1, "f": 1e-7, "big": 2**70, "s": "\\u0000", "nested": [[{"k": []}]]}),
    AuditEvent("a" * 256, "b" * 64, "c" * 1024, "ok", 201, "", "", None),
]


@pytest.mark.parametrize("ev", _TRICKY)
def test_a_journal_line_hashes_to_exactly_the_canonical_form_verify_recomputes(ev):
    """The fold only concatenates a line's canonical pieces around prev and seq and hashes:
    the bytes must be those of _canonical over the stored columns, for any content."""
    from sms.audit.service import _canonical, _journal_line, _line_item

    line = _journal_line("2026-12-02T01:02:03.000004+00:00", ev)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.count(b"\t") == 3
    ts, cols, head, mid, tail = _line_item(line[:-1])
    stored = AuditEvent(*cols[:7], json.loads(cols[7]))  # what verify reads back from the row
    for seq, prev in ((1, "0" * 64), (123456789, "ab" * 32)):
        assert head + prev.encode() + mid + str(seq).encode() + tail == _canonical(seq, ts, stored, prev)


def test_lines_of_the_earlier_format_still_fold_and_an_edited_line_fails_verification(services):
    """A journal left by the previous version (one JSON array per line) is folded as before;
    a line whose columns were edited after it was written is linked but breaks verification."""
    from sms.audit.service import _journal_line

    d = _journal_dir(services)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = d / "oldhost-1-deadbeef.journal"  # no process holds its lock: an orphan
    old.write_bytes(b'["2026-01-01T00:00:00.000001+00:00","token:old","secret.read","secrets/d/s","ok",200,'
                    b'"old-1","127.0.0.1",{"method":"GET"}]\n')
    services.audit.flush()
    entries = services.audit.entries(limit=100000)
    assert [e["actor"] for e in entries if e["request_id"] == "old-1"] == ["token:old"]
    assert not old.exists() and services.audit.verify().ok

    line = _journal_line("2026-01-01T00:00:00.000002+00:00", _ev(9, "ed"))
    damaged = d / "oldhost-3-deadbeef.journal"  # a detail that is not a JSON object: kept as evidence
    damaged.write_bytes(line.replace(b'"{}"]\t', b'"{"]\t', 1))
    services.audit.flush()
    assert [e["action"] for e in services.audit.entries(limit=100000)][-1] == "audit.journal"
    assert services.audit.verify().ok

    forged = d / "oldhost-2-deadbeef.journal"
    forged.write_bytes(line.replace(b"token:ed9", b"token:xx9", 1))  # the column, not the hashed piece
    services.audit.flush()
    report = services.audit.verify()
    assert not report.ok and "modified" in report.problem


def _outbox_write(log: AuditLog, services, ev: AuditEvent) -> None:
    """A write committed with its entry in ``log``'s outbox, as a request's write does."""
    from sms.db import attach, transaction

    work = log.attached(lambda: ev)
    with attach(work), transaction(services.sessions, write=True) as s:
        s.execute(text("SELECT 1"))
    assert work.committed


def test_a_workers_write_is_linked_by_its_own_fold_after_what_it_journaled_before(services):
    """Another process's fold leaves a worker's fresh outbox entries to that worker, whose fold
    links them with its journal, in order (before migration 0007 any fold took them and could
    link a write ahead of its worker's earlier reads)."""
    a = services.audit
    b = _log(services, fold_interval=3600)  # another worker; it folds only when told
    a.append(_ev(0, "a"))
    b.append(_ev(1, "b"))  # journaled by b ...
    _outbox_write(b, services, _ev(2, "b"))  # ... then b writes
    a.journal.fold_own()
    ids = _request_ids(services)
    assert "a-0" in ids and "b-1" not in ids and "b-2" not in ids  # a's fold left b's write to b
    with services.engine.connect() as c:
        assert c.execute(text("SELECT origin FROM audit_pending")).scalar_one() == b.journal.origin
    b.journal.fold_own()
    ids = _request_ids(services)
    assert [i for i in ids if i.startswith("b-")] == ["b-1", "b-2"]
    b.close()
    assert services.audit.verify().ok


def test_a_dead_workers_outbox_entries_are_taken_by_others_after_the_orphan_interval(services):
    a = services.audit
    b = _log(services, fold_interval=3600)
    _outbox_write(b, services, _ev(1, "gone"))  # b then never folds (as if killed)
    a.journal.fold_own()
    assert "gone-1" not in _request_ids(services)
    a.journal.orphan_every = 0.3
    time.sleep(0.4)
    a.journal.fold_own()
    assert _request_ids(services).count("gone-1") == 1
    with services.engine.connect() as c:
        assert c.execute(text("SELECT COUNT(*) FROM audit_pending")).scalar_one() == 0
    assert services.audit.verify().ok


def test_a_flush_folds_live_journals_and_the_whole_outbox_together_in_order(services):
    b = _log(services, fold_interval=3600)
    b.append(_ev(1, "f"))
    _outbox_write(b, services, _ev(2, "f"))
    b.append(_ev(3, "f"))
    services.audit.flush()  # what verify and the listing do first
    assert [i for i in _request_ids(services) if i.startswith("f-")] == ["f-1", "f-2", "f-3"]
    with services.engine.connect() as c:
        assert c.execute(text("SELECT COUNT(*) FROM audit_pending")).scalar_one() == 0
    b.close()
    assert services.audit.verify().ok
