"""Append-only, hash-chained audit log with a token-held MAC on every entry.

Each entry's hash covers its canonical JSON (which includes the previous entry's hash), so
an edited, inserted or deleted entry breaks the chain. Because an attacker with database
access could recompute a plain hash chain, the chain is also authenticated with AES-GMAC
(AES-256-GCM over empty plaintext, an entry hash as associated data) under a key that never
leaves the token: the last entry of every committed batch carries the MAC of its hash, which
covers it and, through the chain, every entry back to the previous MAC. ``csm audit verify``
detects edits even when the hashes were redone, and a tail cut inside a batch.

Entries record who, what, when and the outcome; they never contain secret values or tokens
(callers pass only names, accessors and paths).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..db import Attached, RawTx, read_one, transaction, write_lock, writer
from ..errors import ServiceUnavailable
from ..groupcommit import GroupCommit
from .journal import Files, Journal, read_complete
from .models import AuditHead, AuditJournalMark, AuditPending, AuditRow

log = logging.getLogger(__name__)

GENESIS = "0" * 64


class MacKeyStore(Protocol):
    """The slice of hsm.KeyStore the audit log needs."""

    def encrypt(self, label: str, plaintext: bytes, aad: bytes = b"") -> bytes: ...

    def decrypt(self, label: str, blob: bytes, aad: bytes = b"") -> bytes: ...


def _bounded(ev: AuditEvent) -> tuple[Any, ...]:
    """An entry's columns as stored (lengths bounded by the table; the detail as JSON text in
    its canonical form, the form it takes in the entry's hash)."""
    return (ev.actor[:256], ev.action[:64], ev.resource[:1024], ev.outcome, ev.status, ev.request_id[:64],
            ev.remote[:64], _CANONICAL_JSON(ev.detail or {}))


def _nothing(tx: RawTx) -> None:
    """No finishing step (an outbox entry is MAC'd when it is folded)."""


class AuditUnwritable(ServiceUnavailable):
    """A write's audit entry could not be added to its transaction: the write is rolled back
    and refused (503)."""


@dataclass(frozen=True)
class AuditEvent:
    actor: str
    action: str
    resource: str
    outcome: str  # "ok" | "denied" | "error" | "unauthenticated"
    status: int
    request_id: str = ""
    remote: str = ""
    detail: dict[str, Any] | None = None


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    ok: bool
    first_bad_seq: int | None
    problem: str


def _canonical(seq: int, ts: str, ev: AuditEvent, prev: str) -> bytes:
    doc = {
        "seq": seq,
        "ts": ts,
        "actor": ev.actor,
        "action": ev.action,
        "resource": ev.resource,
        "outcome": ev.outcome,
        "status": ev.status,
        "request_id": ev.request_id,
        "remote": ev.remote,
        "detail": ev.detail or {},
        "prev": prev,
    }
    return _CANONICAL_JSON(doc).encode()


# Made once (json.dumps builds an encoder per call when given options); the same output.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_STR = json.encoder.encode_basestring  # a string as _CANONICAL_JSON writes it (ensure_ascii=False)

# An entry ready to be linked: its timestamp, its columns as stored (_bounded), and its
# canonical form in three pieces around the two values only linking knows (prev and seq):
# canonical = head + prev + mid + seq + tail. Linking one is then a concatenation and a hash.
Item = tuple[str, tuple[Any, ...], bytes, bytes, bytes]


def _item(ts: str, ev: AuditEvent) -> Item:
    """``ev`` ready to link: the bytes of :func:`_canonical` (keys in sorted order: action actor
    detail outcome prev remote request_id resource seq status ts) over the values as stored."""
    cols = _bounded(ev)
    return (ts, cols, *_pieces(ts, cols)[:3])


def _pieces(ts: str, cols: tuple[Any, ...]) -> tuple[bytes, bytes, bytes, bytes]:
    """The canonical form's three pieces, and the columns (ts first) as a JSON array."""
    actor, action, resource, outcome, status, request_id, remote, detail = cols
    a, r, o = _STR(actor), _STR(resource), _STR(outcome)
    c, q, m, t = _STR(action), _STR(request_id), _STR(remote), _STR(ts)
    s = status if type(status) is int else _CANONICAL_JSON(status)
    return (f'{{"action":{c},"actor":{a},"detail":{detail},"outcome":{o},"prev":"'.encode(),
            f'","remote":{m},"request_id":{q},"resource":{r},"seq":'.encode(),
            f',"status":{s},"ts":{t}}}'.encode(),
            f'[{t},{a},{c},{r},{o},{s},{q},{m},{_STR(detail)}]'.encode())


def _journal_line(ts: str, ev: AuditEvent) -> bytes:
    """A journal line: the columns as a JSON array (ts first), then the three canonical pieces,
    tab-separated (JSON text holds no raw tab or newline): a fold parses the array and hashes."""
    head, mid, tail, cols = _pieces(ts, _bounded(ev))
    return b"\t".join((cols, head, mid, tail)) + b"\n"


def _line_item(line: bytes) -> Item | None:
    """The entry of a journal line, or None if it is not one (a damaged file). Lines of the
    earlier format (a JSON array only, the detail an object) are read too. The columns are
    bounded again; a line whose columns do not match its pieces is linked as it is and fails
    verification, which is what a tampered journal should do."""
    parts = line.split(b"\t")
    n = len(parts)
    if n != 4 and n != 1:
        return None
    try:
        v = json.loads(parts[0])
    except (ValueError, RecursionError):
        return None
    if type(v) is not list or len(v) != 9:
        return None
    ts, actor, action, resource, outcome, status, request_id, remote, detail = v
    if not (type(ts) is str and type(actor) is str and type(action) is str and type(resource) is str
            and type(outcome) is str and type(status) is int and type(request_id) is str and type(remote) is str):
        return None
    if n == 1:  # the earlier format
        if type(detail) is not dict:
            return None
        return _item(ts, AuditEvent(actor, action, resource, outcome, status, request_id, remote, detail))
    if type(detail) is not str or detail[:1] != "{":
        return None
    try:  # the listing and verify read it back: a damaged one becomes an evidence entry instead
        if type(json.loads(detail)) is not dict:
            return None
    except (ValueError, RecursionError):
        return None
    return ts, (actor[:256], action[:64], resource[:1024], outcome[:32], status, request_id[:64], remote[:64],
                detail), parts[1], parts[2], parts[3]


def _row_event(r: AuditRow) -> AuditEvent:
    return AuditEvent(r.actor, r.action, r.resource, r.outcome, r.status, r.request_id, r.remote, json.loads(r.detail))


# The append path runs on every request: plain SQL on the DBAPI cursor (db.raw_transaction).
_COLUMNS = ("seq", "ts", "actor", "action", "resource", "outcome", "status", "request_id", "remote", "detail",
            "prev_hash", "entry_hash", "mac", "mac_key")
_HEAD_SQL = f"SELECT seq, entry_hash FROM {AuditHead.__tablename__} WHERE id = 1"
_INSERT_SQL = (f"INSERT INTO {AuditRow.__tablename__} ({', '.join(_COLUMNS)}) "
               f"VALUES ({', '.join('?' for _ in _COLUMNS)})")
_GENESIS_SQL = f"INSERT INTO {AuditHead.__tablename__} (id, seq, entry_hash) VALUES (1, 0, ?)"
_MOVE_HEAD_SQL = f"UPDATE {AuditHead.__tablename__} SET seq = ?, entry_hash = ? WHERE id = 1"
_SET_MAC_SQL = f"UPDATE {AuditRow.__tablename__} SET mac = ?, mac_key = ? WHERE seq = ?"
_MARK_SQL = f"SELECT folded FROM {AuditJournalMark.__tablename__} WHERE name = ?"
_SET_MARK_SQL = (f"INSERT INTO {AuditJournalMark.__tablename__} (name, folded, updated) VALUES (?, ?, ?) "
                 "ON CONFLICT (name) DO UPDATE SET folded = excluded.folded, updated = excluded.updated")
_FORGET_MARKS_SQL = f"DELETE FROM {AuditJournalMark.__tablename__} WHERE folded < 0 AND updated < ?"
_PENDING_COLUMNS = ("ts", "actor", "action", "resource", "outcome", "status", "request_id", "remote", "detail")
_PENDING_INSERT_SQL = (f"INSERT INTO {AuditPending.__tablename__} ({', '.join(_PENDING_COLUMNS)}, origin) "
                       f"VALUES ({', '.join('?' for _ in _PENDING_COLUMNS)}, ?)")
# A fold takes its own process's entries, those of no process, and others' left for orphan_every.
_PENDING_MINE = "ts < ? AND (origin = ? OR origin = '' OR ts < ?)"
_PENDING_SELECT_SQL = (f"SELECT id, {', '.join(_PENDING_COLUMNS)} FROM {AuditPending.__tablename__} "
                       f"WHERE {_PENDING_MINE} ORDER BY id LIMIT 10000")
_PENDING_SELECT_ALL_SQL = (f"SELECT id, {', '.join(_PENDING_COLUMNS)} FROM {AuditPending.__tablename__} "
                           "WHERE ts < ? ORDER BY id LIMIT 10000")
_PENDING_DELETE_SQL = f"DELETE FROM {AuditPending.__tablename__} WHERE id = ANY(?)"  # PostgreSQL
_PENDING_DELETE_ONE_SQL = f"DELETE FROM {AuditPending.__tablename__} WHERE id = ?"
_PENDING_ANY_SQL = f"SELECT 1 FROM {AuditPending.__tablename__} WHERE {_PENDING_MINE} LIMIT 1"
_FOLD_CHUNK = 4 << 20  # journal bytes folded per transaction (a final fold reads to the end)


class AuditLog:
    """The audit log. ``append`` blocks until the entry is committed (or raises).

    Appends from concurrent threads are group-committed (:mod:`sms.groupcommit`): one
    transaction takes the chain head's lock once for a whole batch, links every entry of the
    batch, and MACs the batch's last entry in the token. Because each entry's hash covers the
    previous hash, that one MAC authenticates every entry since the previous MAC'd one; the
    other entries of the batch store an empty MAC. ``batch_max=1`` gives one transaction and
    one MAC per entry.

    With ``journal_dir`` (``audit_sync = "journal"``, the default) ``append`` instead writes
    the entry to this process's journal file and returns at once, and a write's entry
    (:meth:`attached`) commits in the write's transaction into ``audit_pending`` (the
    *outbox*); the same fold links both into the chain and MACs them (:mod:`sms.audit.journal`).
    A write then neither reads nor moves the chain head nor asks the token for a MAC, and on
    PostgreSQL the writes of all instances no longer queue one by one on the head's row lock.
    """

    def __init__(self, sessions: sessionmaker[Session], keystore: MacKeyStore, mac_key_label: str, *,
                 batch_max: int = 256, wait_timeout: float = 10.0, journal_dir: Path | None = None,
                 fold_interval: float = 0.2, **journal_options: Any) -> None:
        self._sessions = sessions
        self._ks = keystore
        self._label = mac_key_label
        lock = write_lock(sessions.kw["bind"])
        self._group: GroupCommit[tuple[str, AuditEvent], int] = GroupCommit(
            self._commit_batch, max_batch=max(1, batch_max), timeout=wait_timeout,
            gate=lock.hold if lock is not None else None)
        self.journal: Journal | None = (
            Journal(journal_dir, self._fold, interval=fold_interval, waiting=self._outbox_waiting, **journal_options)
            if journal_dir is not None else None)

    @property
    def group(self) -> GroupCommit[tuple[str, AuditEvent], int]:
        return self._group

    def append(self, ev: AuditEvent) -> int | None:
        """Append one entry. Without a journal: returns its seq once its batch has committed.
        With one: returns None once the entry is in the journal file.

        Raises :class:`~sms.groupcommit.GroupCommitError` (with the cause) when the batch could
        not be committed or did not commit in time, :class:`~sms.audit.journal.JournalRefused`
        when the journal cannot take it: the caller must then refuse its request.
        """
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        if self.journal is not None:
            self.journal.write(_journal_line(ts, ev))
            return None
        return self._group.submit((ts, ev))

    def start(self) -> None:
        """Start folding the journals in the background now (a server worker at start-up)."""
        if self.journal is not None:
            self.journal.start()

    def close(self) -> None:
        """Fold and delete this process's journal and stop its fold thread."""
        if self.journal is not None:
            self.journal.close()

    def flush(self) -> None:
        """Fold every journal of the data directory into the chain (before reading the chain)."""
        if self.journal is not None:
            self.journal.fold_all()

    def _fold(self, files: Files, final: bool, everything: bool = False) -> dict[str, int]:
        """Link the outbox and the entries of ``files`` not folded yet into the chain, in one
        transaction that holds the chain head's lock first (so folds of several processes
        take turns and each reads the offsets the previous one left). Returns each file's new
        offset (-1: finished).

        Both sources are cut at one instant taken first: only entries stamped before it are
        folded (the rest wait for the next fold), so a write's entry and the entries its
        process stamped before it are folded together or in that order, and nothing stamped
        after a write (which comes after its commit) overtakes it. The outbox is read first: a
        write stamped before the cut whose commit came after the read is still pending, and so
        are its process's later entries (stamped after it). ``files`` may be a callable, listed
        after the cut (a journal opened meanwhile is read too). A ``final`` fold (a dead or
        retired file) takes its files to the end.

        The outbox entries taken are this process's own (its journal's ``origin``), those of no
        process, and those another process has left for ``orphan_every`` (it died or stalls):
        a write's entry is linked by the fold of the process that journaled the entries around
        it, so each process's entries keep their order in the chain. ``everything`` takes the
        whole outbox (a flush before the chain is read, with all live journals)."""
        offsets: dict[str, int] = {}
        with writer(self._sessions).transaction() as tx:
            head = self._lock_head(tx)
            now = datetime.now(UTC)
            cut = now.isoformat(timespec="microseconds")
            items = self._pending_items(tx, cut, None if everything else self._orphan_filter(now))
            items += self._journal_items(tx, files() if callable(files) else files, final, offsets,
                                         None if final else cut)
            if items:
                items.sort(key=lambda it: it[0])
                self._append_rows(tx, items, head=head)
            if final:
                tx.execute(_FORGET_MARKS_SQL, (int(time.time()) - 86400,))
        return offsets

    def _orphan_filter(self, now: datetime) -> tuple[str, str]:
        """(this process's origin, the time before which others' outbox entries are orphans)."""
        assert self.journal is not None
        left = (now - timedelta(seconds=self.journal.orphan_every)).isoformat(timespec="microseconds")
        return self.journal.origin, left

    def _outbox_waiting(self) -> bool:
        """Whether the outbox holds entries this process's fold now would take (stamped before
        now: an entry stamped ahead of this host's clock, by another host's, waits)."""
        now = datetime.now(UTC)
        return read_one(self._sessions, _PENDING_ANY_SQL,
                        (now.isoformat(timespec="microseconds"), *self._orphan_filter(now))) is not None

    @staticmethod
    def _pending_items(tx: RawTx, cut: str, mine: tuple[str, str] | None) -> list[Item]:
        """The outbox's committed entries stamped before ``cut`` (taken out of it in ``tx``):
        with ``mine`` (origin, orphan time) those this process's fold takes, else all."""
        rows = (tx.execute(_PENDING_SELECT_SQL, (cut, *mine)) if mine is not None
                else tx.execute(_PENDING_SELECT_ALL_SQL, (cut,))).fetchall()
        if rows and tx.dialect == "postgresql":
            tx.execute(_PENDING_DELETE_SQL, ([r[0] for r in rows],))
        elif rows:
            tx.executemany(_PENDING_DELETE_ONE_SQL, [(r[0],) for r in rows])
        return [_item(r[1], AuditEvent(r[2], r[3], r[4], r[5], r[6], r[7], r[8], json.loads(r[9]))) for r in rows]

    def _journal_items(self, tx: RawTx, files: Sequence[tuple[str, int]], final: bool,
                       offsets: dict[str, int], cut: str | None = None) -> list[Item]:
        """The entries of ``files`` not folded yet, read from each file's recorded offset; the
        offsets are moved (in ``tx``, under the chain head's lock). ``final``: to the end, and
        the file is marked finished (never folded again). ``cut``: stop at the first entry
        stamped at or after it (left for the next fold)."""
        items: list[Item] = []
        for name, fd in files:
            row = tx.one(_MARK_SQL, (name,))
            offset = int(row[0]) if row is not None else 0
            if offset < 0:  # finished already
                offsets[name] = -1
                continue
            while True:
                used, lines = read_complete(fd, offset, _FOLD_CHUNK)
                taken, stopped = 0, False
                for line in lines:
                    it = _line_item(line)
                    if it is not None and cut is not None and it[0] >= cut:
                        stopped = True
                        break
                    taken += len(line) + 1
                    if it is None:  # not written by csm: keep the evidence in the chain
                        it = _item(datetime.now(UTC).isoformat(timespec="microseconds"), AuditEvent(
                            "csm", "audit.journal", f"audit-journal/{name}", "error", 500,
                            detail={"problem": "unreadable journal line", "offset": offset}))
                    items.append(it)
                offset += taken
                if stopped or not final or used == 0:
                    break
            new = -1 if final else offset
            if row is None or new != int(row[0]):
                tx.execute(_SET_MARK_SQL, (name, new, int(time.time())))
            offsets[name] = new
        return items

    def attached(self, event: Callable[[], AuditEvent]) -> Attached:
        """The entry of a write, to commit in the write's own transaction (:func:`sms.db.attach`):
        if the entry cannot be added the write rolls back, and a committed write has its entry.

        ``event`` is called on the writing thread when the write is handed in; a write result
        with an ``audit_detail()`` method adds that to the entry's detail. With the journal the
        entry goes into the outbox (linked and MAC'd by the next fold; refused once folding has
        failed for ``max_lag``); without it, it is linked into the chain inside the write's
        transaction and the transaction's last entry is MAC'd just before its COMMIT (once per
        transaction, so a batch of writes costs one MAC, as appends do). The committed entry is
        left in ``record``."""

        def prepare() -> Callable[[RawTx, Any], None]:
            ts, ev = datetime.now(UTC).isoformat(timespec="microseconds"), event()

            def add(tx: RawTx, result: Any) -> None:
                described = getattr(result, "audit_detail", None)
                entry = replace(ev, detail={**(ev.detail or {}), **described()}) if described is not None else ev
                journal = self.journal
                if journal is not None:  # into the outbox, linked into the chain (and MAC'd) by a fold
                    if journal.stalled():
                        raise AuditUnwritable("the audit log cannot be written; request refused")
                    journal.start()  # this process's fold links its own outbox entries
                    try:
                        tx.execute(_PENDING_INSERT_SQL, (ts, *_bounded(entry), journal.origin))
                    except Exception as exc:
                        raise AuditUnwritable("the audit log cannot be written; request refused") from exc
                    work.record = entry
                    return
                try:
                    self._append_rows(tx, (_item(ts, entry),), mac=False)
                except Exception as exc:
                    raise AuditUnwritable("the audit log cannot be written; request refused") from exc
                work.record = entry

            return add

        work = Attached(prepare, _nothing if self.journal is not None else self._mac_head)
        return work

    def _mac_head(self, tx: RawTx) -> None:
        """MAC the chain's current last entry (it covers every entry since the previous MAC)."""
        seq, digest = tx.one(_HEAD_SQL)
        if int(seq) > 0:
            tx.execute(_SET_MAC_SQL, (self._ks.encrypt(self._label, b"", aad=bytes.fromhex(digest)), self._label,
                                      int(seq)))

    def _commit_batch(self, items: Sequence[tuple[str, AuditEvent]]) -> list[int]:
        """Link, MAC and insert a batch in one transaction, serialised across processes by the
        head row lock (FOR UPDATE on PostgreSQL) or the database write lock (SQLite). On SQLite
        the batch's leader takes the write lock before it takes the batch (the group's gate),
        so entries that queue while another process commits join this batch; the transaction
        runs on the :class:`~sms.db.Writer`'s connection (writes carry their own entries in
        their own transactions, see :meth:`attached`)."""
        with writer(self._sessions).transaction() as tx:
            return self._append_rows(tx, [_item(ts, ev) for ts, ev in items])

    @staticmethod
    def _lock_head(tx: RawTx) -> tuple[int, str]:
        """The chain head (seq, hash), locked for this transaction (FOR UPDATE on PostgreSQL;
        on SQLite the writing transaction holds the database write lock)."""
        head = tx.one(_HEAD_SQL + (" FOR UPDATE" if tx.dialect == "postgresql" else ""))
        if head is None:  # pragma: no cover - created by the migration
            tx.execute(_GENESIS_SQL, (GENESIS,))
            return 0, GENESIS
        return int(head[0]), str(head[1])

    def _append_rows(self, tx: RawTx, items: Sequence[Item], *, mac: bool = True,
                     head: tuple[int, str] | None = None) -> list[int]:
        """Link ``items`` (see :func:`_item`) into the chain (after ``head`` if already locked);
        MAC the last one if ``mac``. Returns their seqs."""
        seq, prev = head if head is not None else self._lock_head(tx)
        rows: list[list[Any]] = []
        sha256 = hashlib.sha256
        for ts, cols, c_head, c_mid, c_tail in items:
            seq += 1
            digest = sha256(b"".join((c_head, prev.encode(), c_mid, str(seq).encode(), c_tail))).hexdigest()
            rows.append([seq, ts, *cols, prev, digest, b"", self._label])
            prev = digest
        if mac:
            rows[-1][12] = self._ks.encrypt(self._label, b"", aad=bytes.fromhex(prev))
        tx.executemany(_INSERT_SQL, rows)
        tx.execute(_MOVE_HEAD_SQL, (seq, prev))
        return list(range(seq - len(rows) + 1, seq + 1))

    def entries(self, *, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        self._flush_quietly()
        with transaction(self._sessions, write=False) as s:
            rows = s.scalars(select(AuditRow).where(AuditRow.seq > after).order_by(AuditRow.seq).limit(limit))
            return [
                {
                    "seq": r.seq, "ts": r.ts, "actor": r.actor, "action": r.action, "resource": r.resource,
                    "outcome": r.outcome, "status": r.status, "request_id": r.request_id, "remote": r.remote,
                    "detail": json.loads(r.detail), "hash": r.entry_hash,
                }
                for r in rows
            ]

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - the chain is still readable; the journal stays
            log.warning("audit journal not folded before reading the log: %s", type(exc).__name__)

    def _iter_rows(self, batch: int = 2000) -> Iterator[AuditRow]:
        last = 0
        while True:
            with transaction(self._sessions, write=False) as s:
                rows = list(s.scalars(select(AuditRow).where(AuditRow.seq > last).order_by(AuditRow.seq).limit(batch)))
            if not rows:
                return
            yield from rows
            last = rows[-1].seq

    def verify(self, progress: Any = None) -> VerifyReport:
        """Walk the whole chain; report the first entry that fails (hash, link, MAC or head).

        An entry with an empty MAC is covered by the next entry that has one (the end of its
        batch); the last entry must carry a MAC."""
        from hsm import DecryptionFailed, KeyNotFound

        self._flush_quietly()
        prev, expected_seq, n = GENESIS, 1, 0
        uncovered: int | None = None  # first seq since the last MAC'd entry
        for r in self._iter_rows():
            n += 1
            if progress is not None:
                progress(n)
            if r.seq != expected_seq:
                return VerifyReport(n, False, r.seq, f"entry {expected_seq} is missing (found {r.seq})")
            if r.prev_hash != prev:
                return VerifyReport(n, False, r.seq, f"entry {r.seq} does not link to entry {r.seq - 1}")
            digest = hashlib.sha256(_canonical(r.seq, r.ts, _row_event(r), r.prev_hash)).hexdigest()
            if digest != r.entry_hash:
                return VerifyReport(n, False, r.seq, f"entry {r.seq} was modified (hash mismatch)")
            if uncovered is None:
                uncovered = r.seq
            if r.mac:
                try:
                    self._ks.decrypt(r.mac_key, r.mac, aad=bytes.fromhex(digest))
                except (DecryptionFailed, KeyNotFound):
                    span = f"entry {r.seq}" if uncovered == r.seq else f"entries {uncovered}-{r.seq}"
                    return VerifyReport(n, False, uncovered, f"{span}: invalid MAC (rewritten chain?)")
                uncovered = None
            prev, expected_seq = r.entry_hash, r.seq + 1
        if uncovered is not None:
            return VerifyReport(n, False, uncovered,
                                f"entries from {uncovered} on are not covered by a MAC (truncated batch?)")
        with transaction(self._sessions, write=False) as s:
            head = s.get(AuditHead, 1)
        if head is None or head.seq != expected_seq - 1 or head.entry_hash != prev:
            return VerifyReport(n, False, expected_seq, "the chain head does not match the last entry (truncated log?)")
        return VerifyReport(n, True, None, "")
