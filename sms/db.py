"""Storage kernel: engine, sessions, declarative base, migrations (Alembic, applied on start).

SQLite (WAL, foreign keys, busy timeout) is the embedded default; a PostgreSQL URL works the
same. Feature packages declare their models on :class:`Base` and their tables in a migration
under ``sms/migrations/versions``.
"""
from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

_WRITE: contextvars.ContextVar[bool] = contextvars.ContextVar("csm_db_write", default=False)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    pass


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with the pragmas/pool settings csm relies on."""
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            # Let SQLAlchemy's "BEGIN" be a real, immediate transaction so writers queue
            # on the lock instead of failing with SQLITE_BUSY on upgrade.
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if _WRITE.get() else "BEGIN")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    return create_engine(url, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session], *, write: bool = True) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error.

    On SQLite a writing unit starts with ``BEGIN IMMEDIATE`` so concurrent writers queue on
    the database lock (busy timeout) instead of failing when they upgrade a read snapshot;
    ``write=False`` starts a plain deferred transaction that never blocks other readers.
    """
    token = _WRITE.set(write)
    try:
        with factory() as session, session.begin():
            yield session
    finally:
        _WRITE.reset(token)


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


# pg_advisory_lock key of csm's migrations (any constant; int64): 0x63736d2d6d696772 = b"csm-migr".
_PG_MIGRATION_LOCK = 0x63736D2D6D696772


def migrate(engine: Engine) -> None:
    """Apply every pending migration (idempotent; safe when several processes start at once).

    Concurrent callers are serialised: on PostgreSQL by a session-level ``pg_advisory_lock``
    held on its own connection around the upgrade, on a SQLite file by an ``fcntl`` lock on
    ``<db file>.migrate.lock`` next to it. The first caller upgrades; the others wait and then
    find the schema at head.
    """
    from alembic import command

    def upgrade() -> None:
        command.upgrade(alembic_config(engine), "head")

    if engine.dialect.name == "postgresql":
        with engine.connect() as lock_conn:
            lock_conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            lock_conn.commit()  # the lock is the session's, not the transaction's
            try:
                upgrade()
            finally:
                lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                lock_conn.commit()
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        upgrade()
        return
    import fcntl

    lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            upgrade()
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def dispose_after_fork(engine: Engine) -> None:
    """Drop pooled connections inherited from a parent process (never share sockets across fork)."""
    engine.dispose(close=False)


__all__ = ["Base", "NullPool", "make_engine", "session_factory", "transaction", "migrate", "ping"]
