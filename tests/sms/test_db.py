"""Storage kernel: raw transactions and the Writer (group commit on SQLite), on SQLite and PostgreSQL."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from sms import db

INSERT = "INSERT INTO csm_meta (key, value) VALUES (?, ?)"


def _keys(services, prefix):
    with services.engine.connect() as c:
        return sorted(r[0] for r in c.execute(text("SELECT key FROM csm_meta WHERE key LIKE :p"), {"p": prefix + "%"}))


def test_driver_errors_come_out_as_sqlalchemy_errors(services, unique):
    with db.raw_transaction(services.engine) as tx:
        tx.execute(INSERT, (f"dup-{unique}", "1"))
    with pytest.raises(IntegrityError), db.raw_transaction(services.engine) as tx:
        tx.execute(INSERT, (f"dup-{unique}", "2"))
    assert _keys(services, f"dup-{unique}") == [f"dup-{unique}"]


def test_concurrent_write_units_all_commit_and_share_transactions_on_sqlite(services, backend, unique):
    w = db.writer(services.engine)

    def unit(i):
        def run(tx):
            tx.execute(INSERT, (f"u-{unique}-{i:02d}", str(i)))
            time.sleep(0.005)  # slow units: the others queue behind the leader
            return i
        return run

    results: dict[int, int] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, w.run(unit(i)))) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: i for i in range(16)}
    assert _keys(services, f"u-{unique}") == [f"u-{unique}-{i:02d}" for i in range(16)]
    if backend == "sqlite":
        assert w._group is not None and w._group.batches < w._group.items


def test_a_failing_unit_leaves_no_trace_and_its_batchmates_commit(services, unique):
    w = db.writer(services.engine)
    gate = threading.Event()
    outcomes: dict[str, object] = {}

    def blocker(tx):
        gate.wait(5)  # holds the current batch open while the next one queues up
        return "blocker"

    def good(name):
        return lambda tx: tx.execute(INSERT, (f"b-{unique}-{name}", "ok")) and name

    def bad(tx):
        tx.execute(INSERT, (f"b-{unique}-bad", "half-done"))
        raise ValueError("refused half-way")

    def call(name, unit):
        try:
            outcomes[name] = w.run(unit)
        except Exception as exc:  # noqa: BLE001
            outcomes[name] = exc

    first = threading.Thread(target=call, args=("blocker", blocker))
    first.start()
    time.sleep(0.1)
    rest = [threading.Thread(target=call, args=(n, u)) for n, u in
            (("good1", good("good1")), ("bad", bad), ("good2", good("good2")))]
    for t in rest:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in [first, *rest]:
        t.join(10)
    assert outcomes["good1"] == "good1" and outcomes["good2"] == "good2" and outcomes["blocker"] == "blocker"
    assert isinstance(outcomes["bad"], ValueError)
    assert _keys(services, f"b-{unique}") == [f"b-{unique}-good1", f"b-{unique}-good2"]


@pytest.mark.parametrize("mode, pragma", [("FULL", 2), ("NORMAL", 1)])
def test_sqlite_synchronous_setting_is_applied_to_every_connection(tmp_path, mode, pragma):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'sync.db'}", sqlite_synchronous=mode)
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA synchronous").scalar_one() == pragma
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
    engine.dispose()
    with pytest.raises(ValueError):
        db.make_engine(f"sqlite:///{tmp_path / 'x.db'}", sqlite_synchronous="OFF")
