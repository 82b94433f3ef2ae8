"""Storage kernel: engine, sessions, declarative base, migrations (Alembic, applied on start).

SQLite (WAL, foreign keys, busy timeout) is the embedded default; a PostgreSQL URL works the
same. Feature packages declare their models on :class:`Base` and their tables in a migration
under ``sms/migrations/versions``.
"""
from __future__ import annotations

import contextvars
import copy
import fcntl
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from .groupcommit import GroupCommit, GroupCommitError
from sqlalchemy.pool import NullPool, QueuePool

log = logging.getLogger(__name__)
T = TypeVar("T")

_WRITE: contextvars.ContextVar[bool] = contextvars.ContextVar("csm_db_write", default=False)


class Attached:
    """Work that must commit in the same transaction as the next write of this context (the
    request's audit entry with the write it records): see :func:`attach`.

    ``prepare`` runs on the writing thread when the write is handed in (so it may read that
    thread's context) and returns the function that adds the work to the transaction, given
    the write's result (None after a :func:`transaction`); it may run more than once when a
    write is retried. ``finish`` runs once per transaction just before its COMMIT (after every
    unit of a :class:`Writer` batch), e.g. to seal what the units added. ``committed`` is set
    once a transaction carrying the work has committed; the work is then never added again.
    ``record`` is free for the work to say what it added."""

    __slots__ = ("prepare", "finish", "committed", "record")

    def __init__(self, prepare: Callable[[], Callable[[RawTx, Any], None]], finish: Callable[[RawTx], None]) -> None:
        self.prepare = prepare
        self.finish = finish
        self.committed = False
        self.record: Any = None


_ATTACHED: contextvars.ContextVar[Attached | None] = contextvars.ContextVar("csm_db_attached", default=None)


@contextmanager
def attach(work: Attached) -> Iterator[Attached]:
    """Within this block, the first writing unit of work that commits — a :class:`Writer` unit or
    a :func:`transaction` with ``write=True`` — carries ``work`` in its transaction: both commit
    or neither does. Reads and :func:`raw_transaction` used directly do not take it."""
    token = _ATTACHED.set(work)
    try:
        yield work
    finally:
        _ATTACHED.reset(token)


def _pending() -> Attached | None:
    work = _ATTACHED.get()
    return work if work is not None and not work.committed else None

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    pass


class SqliteWriteLock:
    """Serialises writing transactions on one SQLite database: a re-entrant thread lock inside
    the process and an ``flock`` on ``<database>.wlock`` across processes.

    SQLite's own busy handler makes a waiting writer *sleep* (1, 2, 5, 10 … ms) and poll, so
    under load most of a queued writer's wait is spent asleep after the lock was already free.
    Here a writer queues on a kernel lock and wakes as soon as the holder is done;
    ``BEGIN IMMEDIATE`` then succeeds at once. Writers that bypass this lock (another tool on
    the same file) are still correct: they fall back to the busy timeout.
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int | None:
        if self._path is None:
            return None
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            # A descriptor inherited over fork shares its lock with the parent: open our own.
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = pid
        return self._fd

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            fd = self._file() if self._depth == 0 else None
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)


_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, SqliteWriteLock] = weakref.WeakKeyDictionary()


def write_lock(engine: Engine) -> SqliteWriteLock | None:
    """The write lock of a SQLite engine (None for other databases)."""
    return _WRITE_LOCKS.get(engine)


SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", **kwargs: Any) -> Engine:
    """Create an engine with the pragmas/pool settings csm relies on.

    ``sqlite_synchronous``: ``FULL`` (default) fsyncs the WAL on every commit, so a commit that
    returned survives a power loss. ``NORMAL`` fsyncs only at checkpoints: still atomic and
    crash-consistent (a killed process loses nothing), but the last commits before a power loss
    or kernel crash may be rolled back."""
    if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(f"sqlite_synchronous must be one of {', '.join(SQLITE_SYNCHRONOUS)}")
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # A pooled connection per busy thread: opening one costs its PRAGMAs (WAL mode, ...), so
        # the pool keeps as many as the server's threads use (plus the group-commit leaders).
        kwargs.setdefault("pool_size", 20)
        kwargs.setdefault("max_overflow", 20)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)
        database = engine.url.database
        _WRITE_LOCKS[engine] = SqliteWriteLock(
            database + ".wlock" if database and database != ":memory:" else None)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            # Let SQLAlchemy's "BEGIN" be a real, immediate transaction so writers queue
            # on the lock instead of failing with SQLITE_BUSY on upgrade.
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # Straight to the driver: a full SQLAlchemy execution here would cost as much as
            # the statement the transaction exists for.
            conn.connection.driver_connection.execute("BEGIN IMMEDIATE" if _WRITE.get() else "BEGIN")

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

    On SQLite a writing unit first takes the :class:`SqliteWriteLock`, then starts with
    ``BEGIN IMMEDIATE``, so concurrent writers queue instead of failing when they upgrade a
    read snapshot; ``write=False`` starts a plain deferred transaction that never blocks other
    readers.
    """
    bind = factory.kw.get("bind")
    lock = write_lock(bind) if write and isinstance(bind, Engine) else None
    work = _pending() if write else None
    token = _WRITE.set(write)
    try:
        with lock.hold() if lock is not None else nullcontext(), factory() as session, session.begin():
            yield session
            if work is not None:
                _add_to_session(session, work)
        if work is not None:
            work.committed = True
    finally:
        _WRITE.reset(token)


def _add_to_session(session: Session, work: Attached) -> None:
    """Run attached work on the session's own DBAPI connection, inside its transaction."""
    session.flush()
    conn = session.connection()
    dialect = conn.dialect
    assert dialect.dbapi is not None
    tx = RawTx(conn.connection.dbapi_connection.cursor(), dialect.name, dialect.paramstyle,  # type: ignore[union-attr]
               dialect.dbapi.Error)
    work.prepare()(tx, None)
    work.finish(tx)


class RawTx:
    """A DBAPI cursor inside one transaction, for the few statements on every request's path.

    SQL is written once with ``?`` placeholders (rewritten to ``%s`` for drivers such as
    psycopg that use the format style). Driver errors come out as SQLAlchemy's exception
    classes (``IntegrityError``, ``OperationalError``), as they would from a Session.
    """

    __slots__ = ("cursor", "dialect", "finishers", "_format", "_error")

    def __init__(self, cursor: Any, dialect: str, paramstyle: str, error: type[Exception]) -> None:
        self.cursor = cursor
        self.dialect = dialect
        # run once each, in order, just before COMMIT (see Attached.finish)
        self.finishers: dict[Callable[[RawTx], None], None] = {}
        self._format = paramstyle in ("format", "pyformat")
        self._error = error

    def finish(self) -> None:
        for fn in list(self.finishers):
            fn(self)

    def _sql(self, sql: str) -> str:
        if not self._format:
            return sql
        out = _FORMAT_SQL.get(sql)
        if out is None:
            out = _FORMAT_SQL[sql] = sql.replace("%", "%%").replace("?", "%s")
        return out

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            self.cursor.execute(self._sql(sql), params)
        except self._error as exc:
            raise DBAPIError.instance(sql, None, exc, self._error) from exc
        return self.cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self.cursor.executemany(self._sql(sql), rows)
        except self._error as exc:
            raise DBAPIError.instance(sql, None, exc, self._error) from exc

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first row (a tuple) or None."""
        return self.execute(sql, params).fetchone()


_FORMAT_SQL: dict[str, str] = {}


@contextmanager
def raw_transaction(factory: sessionmaker[Session] | Engine, *, write: bool = True,
                    connection: Callable[[], Any] | None = None) -> Iterator[RawTx]:
    """Like :func:`transaction`, on a pooled DBAPI connection (no SQLAlchemy execution layer).

    Same locking as :func:`transaction`: on SQLite a writer holds the :class:`SqliteWriteLock`
    and starts with ``BEGIN IMMEDIATE``. Commits on success, rolls back on any error.
    ``connection``: gives (once the lock is held) a pooled connection the caller keeps: it is
    not returned to the pool; one that cannot even roll back is invalidated (``is_valid`` false)."""
    engine: Engine = factory if isinstance(factory, Engine) else factory.kw["bind"]
    dialect = engine.dialect
    lock = write_lock(engine) if write else None
    dbapi = dialect.dbapi
    assert dbapi is not None
    with lock.hold() if lock is not None else nullcontext():
        conn = engine.raw_connection() if connection is None else connection()
        try:
            try:
                cur = conn.cursor()
                if dialect.name == "sqlite":
                    cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                tx = RawTx(cur, dialect.name, dialect.paramstyle, dbapi.Error)
                yield tx
                tx.finish()
                conn.commit()
            except dbapi.Error as exc:
                raise DBAPIError.instance(None, None, exc, dbapi.Error) from exc
        except BaseException:
            try:
                conn.rollback()
            except Exception:  # noqa: BLE001 - a broken connection is dropped from the pool
                conn.invalidate()
            raise
        finally:
            if connection is None:
                conn.close()


def read_one(factory: sessionmaker[Session] | Engine, sql: str, params: Sequence[Any] = ()) -> Any:
    """The first row (or None) of one SELECT, without an explicit transaction: a single
    statement is atomic by itself (SQLite and the kept PostgreSQL connection run it in
    autocommit). Saves BEGIN/COMMIT on hot reads.

    Each thread keeps one pooled connection for these reads (no pool checkout, reset and, on
    PostgreSQL, pre-ping round trip per read; PostgreSQL's is in autocommit mode, so no
    transaction is left open between reads); it is dropped on any error and after a fork. On
    PostgreSQL a read that fails because its kept connection died (a server restart) is tried
    once more on a fresh one."""
    engine: Engine = factory if isinstance(factory, Engine) else factory.kw["bind"]
    dialect = engine.dialect
    assert dialect.dbapi is not None
    if isinstance(engine.pool, QueuePool):  # a database file or server (not :memory:)
        try:
            return _thread_reader(engine).one(sql, params)
        except OperationalError:
            _drop_thread_reader(engine)
            if dialect.name != "postgresql":
                raise
        except BaseException:
            _drop_thread_reader(engine)
            raise
        try:  # the kept connection was gone: once more on a new one (a SELECT may be repeated)
            return _thread_reader(engine).one(sql, params)
        except BaseException:
            _drop_thread_reader(engine)
            raise
    conn = engine.raw_connection()
    try:
        return RawTx(conn.cursor(), dialect.name, dialect.paramstyle, dialect.dbapi.Error).one(sql, params)
    finally:
        conn.close()


_READERS = threading.local()


def _thread_reader(engine: Engine) -> RawTx:
    """A cursor on this thread's kept read connection to ``engine`` (one engine per thread at a
    time: a thread that moves to another engine returns the previous connection to its pool)."""
    kept = getattr(_READERS, "kept", None)
    if kept is not None and kept[0] is engine:
        return kept[2]  # type: ignore[no-any-return]
    if kept is not None:
        _drop_thread_reader(kept[0], invalidate=False)
    conn = engine.raw_connection()
    dialect = engine.dialect
    assert dialect.dbapi is not None
    if dialect.name == "postgresql":
        raw: Any = conn.dbapi_connection
        raw.rollback()  # idle after the pool's ping: no round trip
        raw.autocommit = True
    reader = RawTx(conn.cursor(), dialect.name, dialect.paramstyle, dialect.dbapi.Error)
    _READERS.kept = (engine, conn, reader)
    return reader


def _drop_thread_reader(engine: Engine, *, invalidate: bool = True) -> None:
    kept = getattr(_READERS, "kept", None)
    if kept is None or kept[0] is not engine:
        return
    _READERS.kept = None
    try:
        if invalidate:
            kept[1].invalidate()
        else:
            if engine.dialect.name == "postgresql":
                raw: Any = kept[1].dbapi_connection
                raw.autocommit = False  # back to the pool as it came
            kept[1].close()
    except Exception:  # noqa: BLE001 - already broken
        log.debug("dropping a broken read connection", exc_info=True)


def _forget_connections_after_fork() -> None:
    """In a forked child, never use a connection of the parent's (kept reads, writers)."""
    global _READERS
    _READERS = threading.local()
    for w in list(_WRITERS.values()):
        w._conn = None


os.register_at_fork(after_in_child=_forget_connections_after_fork)


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class Writer:
    """Runs write units (functions of a :class:`RawTx`) and returns their results.

    On SQLite, whose writers are serialised anyway, units handed in by concurrent threads of a
    process share transactions (:mod:`sms.groupcommit`): one ``BEGIN IMMEDIATE`` and one
    ``COMMIT`` — one fsync — per batch. Each unit runs inside its own ``SAVEPOINT``, so a unit
    that raises leaves no trace and its caller gets its exception, while the others commit.
    Nobody gets a result before the batch's COMMIT succeeded; if it fails, every caller of the
    batch gets the error. A unit runs on whichever thread leads its batch: it must only use
    what it closes over and the transaction it is given.

    Other databases take one transaction per unit: concurrent transactions commit in parallel
    there, and PostgreSQL already flushes its log for them in groups.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 64) -> None:
        self._engine = engine
        self._conn: Any = None  # the connection batch leaders commit on (dropped in a forked child)
        lock = write_lock(engine)
        self._group: GroupCommit[Callable[[RawTx], Any], Any] | None = (
            GroupCommit(self._commit, max_batch=max_batch, gate=lock.hold if lock is not None else None)
            if engine.dialect.name == "sqlite" else None)

    def run(self, unit: Callable[[RawTx], T]) -> T:
        """Run ``unit`` in a committed transaction; :func:`attach`-ed work of the caller's
        context joins it (inside the unit's savepoint on SQLite)."""
        work = _pending()
        if work is not None:
            unit = _with_work(unit, work)
        out = self._run(unit)
        if work is not None:
            work.committed = True
        return out

    def _run(self, unit: Callable[[RawTx], T]) -> T:
        if self._group is None:
            with raw_transaction(self._engine) as tx:
                return unit(tx)
        try:
            outcome = self._group.submit(unit)
        except GroupCommitError as exc:
            if isinstance(exc.__cause__, DBAPIError):  # keep the retry-able class for callers
                raise copy.copy(exc.__cause__) from exc
            raise
        if isinstance(outcome, _Failed):
            raise outcome.error
        return outcome  # type: ignore[no-any-return]

    def _connection(self) -> Any:
        """The connection batches commit on (one leader at a time uses it): kept across batches,
        so a batch pays no pool checkout and reset; replaced after a fork or once invalidated."""
        conn = self._conn
        if conn is None or not conn.is_valid:
            conn = self._conn = self._engine.raw_connection()
        return conn

    @contextmanager
    def transaction(self) -> Iterator[RawTx]:
        """A writing transaction of its own (not a unit of a batch), on SQLite on the connection
        the batches use: for a caller that batches by itself (the audit log) and may already hold
        the write lock (as a :class:`GroupCommit` gate; the lock is re-entrant)."""
        with raw_transaction(self._engine, connection=self._connection if self._group is not None else None) as tx:
            yield tx

    def _commit(self, units: Sequence[Callable[[RawTx], Any]]) -> list[Any]:
        out: list[Any] = []
        with raw_transaction(self._engine, connection=self._connection) as tx:
            for unit in units:
                tx.execute("SAVEPOINT csm_unit")
                try:
                    out.append(unit(tx))
                except Exception as exc:  # noqa: BLE001 - handed to the unit's own caller
                    tx.execute("ROLLBACK TO SAVEPOINT csm_unit")
                    out.append(_Failed(exc))
                tx.execute("RELEASE SAVEPOINT csm_unit")
        return out


def _with_work(unit: Callable[[RawTx], T], work: Attached) -> Callable[[RawTx], T]:
    add = work.prepare()  # on the caller's thread: a batch's units run on its leader's

    def both(tx: RawTx) -> T:
        out = unit(tx)
        add(tx, out)
        tx.finishers[work.finish] = None
        return out

    return both


_WRITERS: weakref.WeakKeyDictionary[Engine, Writer] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def writer(factory: sessionmaker[Session] | Engine) -> Writer:
    """The process's :class:`Writer` for this engine (created on first use)."""
    engine: Engine = factory if isinstance(factory, Engine) else factory.kw["bind"]
    w = _WRITERS.get(engine)
    if w is None:
        with _WRITERS_LOCK:
            w = _WRITERS.get(engine)
            if w is None:
                w = _WRITERS[engine] = Writer(engine)
    return w


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


__all__ = ["Base", "NullPool", "RawTx", "make_engine", "session_factory", "transaction", "raw_transaction", "read_one",
           "migrate", "ping", "write_lock", "Writer", "writer", "Attached", "attach"]
