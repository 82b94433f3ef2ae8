"""Several processes starting at once on a fresh database all migrate it without failing."""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

from sms import db
from tests.sms.conftest import PG_URL, PgSchema, require_pg

PROCESSES = 3
ROUNDS = 2


def _migrate(url: str, schema: str | None, barrier: Any, results: Any) -> None:
    """Child: wait until every sibling is ready, then migrate; report 'ok' or the error."""
    kwargs = {"connect_args": {"options": f"-csearch_path={schema}"}} if schema else {}
    engine = db.make_engine(url, **kwargs)
    try:
        barrier.wait(30)
        db.migrate(engine)
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        results.put(f"{type(exc).__name__}: {exc}"[:500])
    finally:
        engine.dispose()


def _race(url: str, schema: str | None = None) -> list[str]:
    import alembic.command  # noqa: F401 - imported once here, not in every child

    # fork: the children start at once without re-importing (they only touch the database)
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_migrate, args=(url, schema, barrier, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return outcomes


def _assert_at_head(engine: Any) -> None:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(db.alembic_config(engine)).get_current_head()
    assert db.current_revision(engine) == head
    assert {"audit_log", "alembic_version"} <= set(inspect(engine).get_table_names())


def test_concurrent_first_start_on_one_sqlite_file(tmp_path: Path):
    for n in range(ROUNDS):
        url = f"sqlite:///{tmp_path / f'race-{n}.db'}"
        assert _race(url) == ["ok"] * PROCESSES
        engine = db.make_engine(url)
        _assert_at_head(engine)
        engine.dispose()


@pytest.mark.postgres
def test_concurrent_first_start_on_one_postgresql_schema():
    require_pg()
    for _ in range(ROUNDS):
        schema = PgSchema()
        try:
            assert _race(PG_URL, schema.name) == ["ok"] * PROCESSES
            engine = schema.engine()
            _assert_at_head(engine)
            engine.dispose()
        finally:
            schema.drop()
