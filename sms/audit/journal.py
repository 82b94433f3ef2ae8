"""The audit journal: per-process append-only files of entries on their way into the chain.

A request whose audit entry does not ride in a write's own transaction (a read, a refusal, an
error) would otherwise wait for a group commit of the chain — the write lock, a token MAC and
an fsync — before it may be answered. With the journal its entry is instead appended to the
worker's journal file (one ``write(2)`` of one line, ``O_APPEND``) before the answer goes
out, and a background thread of the worker folds the journal into the chain every
``fold_interval`` seconds: hash-linked, MAC'd in the token and committed like any other batch,
in one transaction that also records how far the journal has been folded
(``audit_journals``). Folding is idempotent and safe to run from any process: the offset is
read and moved inside the transaction that holds the chain head's lock.

What the answer is guaranteed: its entry is in a file on disk (it survives the process being
killed; a power loss or kernel crash within the fold interval can lose it, as it can lose the
lines OpenBao's file audit device writes without fsync). ``audit_sync = "commit"`` keeps the
stricter behaviour (answered only once the entry is committed and fsynced).

Files: ``<data_dir>/audit-journal/<host>-<pid>-<random>.journal``, mode 0600, each held under
an exclusive ``flock`` by the process writing it for as long as it lives. A file whose lock can
be taken belongs to a process that is gone: whoever finds it (any worker's fold thread, every
few seconds, or ``csm audit verify``) folds what is left, marks it finished and deletes it. A
journal is created under a hidden temporary name and renamed only once locked, so a live one
is never mistaken for an orphan. A worker rotates to a new file once ``rotate_bytes`` are
folded. Appends are refused (the request gets 503) when the backlog exceeds ``max_backlog``
bytes or nothing could be folded for ``max_lag`` seconds: the journal never becomes an
unbounded substitute for the chain.

Entries of writes take the same way in, through the database: a write commits its entry into
the ``audit_pending`` outbox in its own transaction (atomic with the write), and the fold
merges outbox and journals by time. Both are cut at one instant taken before either is read and
a process's folds read its own journals with its own outbox entries (each carries the
writing process's ``origin``), so a write's entry is linked neither ahead of what its process
journaled before it nor behind what it stamped after it. Others take a process's outbox
entries only once they are ``orphan_every`` old (the process died or stalls), and a flush
before the chain is read folds all live journals with the whole outbox at once. Across
processes entries interleave in fold order; each carries its own timestamp.
"""
from __future__ import annotations

import atexit
import fcntl
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

SUFFIX = ".journal"
_TMP_PREFIX = "."

class JournalRefused(Exception):
    """The entry was not journaled (backlog full, folding stalled, or the file is unwritable)."""


@dataclass
class JournalFile:
    """One journal file. ``written``: bytes appended by this process; ``folded``: bytes known
    to be in the chain (a hint; the authority is the ``audit_journals`` row)."""

    name: str
    path: Path
    fd: int
    written: int = 0
    folded: int = 0

    def pending(self) -> bool:
        return self.written > self.folded


def read_complete(fd: int, offset: int, limit: int) -> tuple[int, list[bytes]]:
    """The whole lines from ``offset`` on (at most about ``limit`` bytes): (bytes they span,
    lines). A trailing line without its newline (still being written, or cut by a crash) is left."""
    data = os.pread(fd, limit, offset)
    end = data.rfind(b"\n")
    if end < 0:
        return 0, []
    return end + 1, data[:end].split(b"\n")


# Folds the given files (or those a callable gives once the fold's cut is taken) into the
# chain; returns, per file, the offset now folded (-1: finished).
Files = list[tuple[str, int]] | Callable[[], list[tuple[str, int]]]
class FoldFn(Protocol):
    def __call__(self, files: Files, final: bool, everything: bool = False, /) -> dict[str, int]: ...


class Journal:
    """The journal files of this process and the thread that folds them.

    ``fold(files, final)`` is the chain's side (``AuditLog._fold``): ``files`` are (name, fd)
    pairs; it folds each from its recorded offset and returns the new offsets; ``final`` folds
    to the end and marks the files finished."""

    def __init__(self, directory: Path, fold: FoldFn, *, interval: float = 0.2, rotate_bytes: int = 64 << 20,
                 max_backlog: int = 64 << 20, max_lag: float = 30.0, orphan_every: float = 5.0,
                 waiting: Callable[[], bool] | None = None) -> None:
        self.directory = directory
        self._fold = fold
        self._waiting = waiting  # entries waiting elsewhere (the writes' outbox): fold them too
        self.interval = interval
        self.rotate_bytes = rotate_bytes
        self.max_backlog = max_backlog
        self.max_lag = max_lag
        self.orphan_every = orphan_every
        self._reset()
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _call(me, Journal._after_fork))
        atexit.register(_call, me, Journal.close)

    def _after_fork(self) -> None:
        """In a forked child (a server worker forked from a parent that loaded the app): fresh
        state, and a fold thread of its own if the parent had one running."""
        running = self._thread is not None and not self._stopped
        self._reset()
        if running:
            self.start()

    def _reset(self) -> None:
        """Fresh state (at start and in a forked child: the parent's files, locks and thread are
        not this process's)."""
        # this process, as the outbox knows it: its fold links its own outbox entries with its
        # journal (in order); others take them only once they are orphan_every old
        self.origin = f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"
        self._lock = threading.Lock()  # guards the file list and appends
        self._fold_lock = threading.Lock()  # one fold of this process at a time
        self._files: list[JournalFile] = []  # oldest first; the last one takes appends
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopped = False
        self._last_ok = time.monotonic()
        self._last_orphans = 0.0
        self._failures = 0

    # ---- appending --------------------------------------------------------------------
    def write(self, line: bytes) -> None:
        """Append one entry line; raises :class:`JournalRefused` if it is not on disk."""
        with self._lock:
            if not self._files:
                self._files.append(self._open_new())
                self._start_thread()
            cur = self._files[-1]
            if any(f.pending() for f in self._files):
                backlog = sum(f.written - f.folded for f in self._files)
                if backlog > self.max_backlog:
                    raise JournalRefused(f"audit journal backlog is {backlog} bytes")
                if time.monotonic() - self._last_ok > self.max_lag:
                    raise JournalRefused(f"audit journal not folded for {self.max_lag:.0f} s")
            else:
                self._last_ok = time.monotonic()  # nothing was waiting: the lag starts now
            try:
                n = os.write(cur.fd, line)
            except OSError as exc:
                raise JournalRefused(f"audit journal not writable: {exc.strerror}") from exc
            cur.written += n
            if n != len(line):  # a short write (disk full): the line is unusable; refuse
                raise JournalRefused("audit journal write was cut short")

    def _open_new(self) -> JournalFile:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        tmp = self.directory / f"{_TMP_PREFIX}{name}.tmp"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise JournalRefused(f"audit journal cannot be created: {exc.strerror}") from exc
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else has it
        path = self.directory / name
        os.rename(tmp, path)  # visible only once locked: never taken for an orphan
        return JournalFile(name, path, fd)

    def start(self) -> None:
        """Start the fold thread if it is not running (it starts by itself at this process's
        first append, and at a write's outbox entry)."""
        if self._thread is None:
            with self._lock:
                self._start_thread()

    def _start_thread(self) -> None:
        if self._thread is None and self.interval > 0:
            me = weakref.ref(self)
            t = threading.Thread(target=_fold_loop, args=(me, self._wake), name="csm-audit-fold", daemon=True)
            self._thread = t
            t.start()

    # ---- folding ----------------------------------------------------------------------
    def fold_own(self) -> None:
        """Fold this process's journals up to what they hold now; rotate a large one."""
        with self._fold_lock:
            for _ in range(100):  # bounded: about 400 MiB of journal or 1 000 000 outbox entries a round
                with self._lock:
                    files = list(self._files)
                outbox = self._waiting is not None and self._waiting()
                if not outbox and not any(f.pending() for f in files):
                    break
                # Every fold takes all of this process's journals with the outbox, listed after
                # the fold's cut (a journal opened meanwhile is included): a write's entry is
                # never folded ahead of what its process journaled before it.
                progressed = self._note(self._fold(self._own_files, False))
                if not progressed and not outbox:
                    break  # what is left was stamped after the fold's cut: next round
            self._last_ok = time.monotonic()
            self._failures = 0
            self._retire()

    def _note(self, offsets: dict[str, int]) -> bool:
        """Record how far this process's files are folded; whether any moved."""
        with self._lock:
            files = list(self._files)
        progressed = False
        for f in files:
            got = offsets.get(f.name, f.folded)
            if got < 0:
                f.folded = f.written
            elif got > f.folded:
                f.folded, progressed = got, True
        return progressed

    def _retire(self) -> None:
        """Rotate to a new file once the current one is large, then finish and delete old ones."""
        with self._lock:
            if self._files and self._files[-1].folded >= self.rotate_bytes:
                self._files.append(self._open_new())
            old = self._files[:-1]
        for f in old:
            self._fold([(f.name, f.fd)], True)
            _unlink(f.path)
            os.close(f.fd)
            with self._lock:
                self._files.remove(f)

    def fold_others(self) -> None:
        """Fold the journals of other processes in the directory whose process is gone
        (finished and deleted)."""
        own = {f.name for f in self._files}
        for path in _journal_files(self.directory):
            if path.name in own or (got := _open_other(path)) is None:
                continue
            fd, alive = got
            try:
                if alive or not _same_file(path, fd):  # live, or finished and deleted by someone else meanwhile
                    continue
                self._fold([(path.name, fd)], True)
                _unlink(path)
            finally:
                os.close(fd)
        self._sweep_tmp()

    def _sweep_tmp(self) -> None:
        """Delete temporary names left by a process that died between create and rename."""
        for p in self.directory.glob(f"{_TMP_PREFIX}*{SUFFIX}.tmp"):
            try:
                fd = os.open(p, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(p, fd):
                    _unlink(p)
            except BlockingIOError:
                pass
            finally:
                os.close(fd)

    def fold_all(self) -> None:
        """Everything journaled in this directory and every outbox entry, up to now, into the
        chain (before reading it): the journals of finished processes, then one fold of all live
        journals with the whole outbox, so each process's entries stay in their order."""
        self.fold_others()
        opened: list[int] = []

        def live() -> list[tuple[str, int]]:
            files = self._own_files()
            own = {name for name, _ in files}
            for path in _journal_files(self.directory):
                if path.name in own or (got := _open_other(path)) is None:
                    continue
                opened.append(got[0])
                if got[1]:  # alive (else its process has just ended: the next orphan pass finishes it)
                    files.append((path.name, got[0]))
            return files

        try:
            with self._fold_lock:
                self._note(self._fold(live, False, True))
                self._last_ok = time.monotonic()
                self._retire()
        finally:
            for fd in opened:
                os.close(fd)

    def tick(self) -> None:
        """One round of the fold thread."""
        try:
            self.fold_own()
            now = time.monotonic()
            if now - self._last_orphans >= self.orphan_every:
                self._last_orphans = now
                self.fold_others()
        except Exception as exc:  # noqa: BLE001 - retried next round; appends refuse once it lags
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 100 == 0:
                log.error("audit journal fold failed (%d in a row): %s: %s", self._failures, type(exc).__name__, exc)

    def close(self) -> None:
        """Fold and delete this process's journals (at exit); what cannot be folded stays on
        disk for the next process to find."""
        self._stopped = True
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=30)  # a fold under way finishes before the caller closes the database
        try:
            if not self._files and not (self._waiting is not None and self._waiting()):
                return
            self.fold_own()
            with self._lock:
                files, self._files = self._files, []
            for f in files:
                self._fold([(f.name, f.fd)], True)
                _unlink(f.path)
                os.close(f.fd)
        except Exception as exc:  # noqa: BLE001 - at exit: leave the file for the next process
            log.warning("audit journal left for the next start to fold: %s", type(exc).__name__)

    def stalled(self) -> bool:
        """Folding has failed for longer than ``max_lag``: entries waiting elsewhere (the
        writes' outbox) must not pile up unsealed either."""
        return self._failures > 0 and time.monotonic() - self._last_ok > self.max_lag

    def _own_files(self) -> list[tuple[str, int]]:
        with self._lock:
            return [(f.name, f.fd) for f in self._files]

    def pending_files(self) -> list[tuple[str, int]]:
        """(name, fd) of this process's journals holding entries not known to be folded."""
        with self._lock:
            return [(f.name, f.fd) for f in self._files if f.pending()]


def _fold_loop(ref: weakref.ref[Journal], wake: threading.Event) -> None:
    while True:
        j = ref()
        if j is None or j._stopped:
            return
        interval = j.interval
        del j
        wake.wait(interval)
        wake.clear()
        j = ref()
        if j is None or j._stopped:
            return
        j.tick()
        del j


def _call(ref: weakref.ref[Journal], method: Callable[[Journal], None]) -> None:
    """``method`` of the journal, if it still exists (fork and exit hooks hold no reference)."""
    j = ref()
    if j is not None:
        method(j)


def _open_other(path: Path) -> tuple[int, bool] | None:
    """Open another process's journal: (fd, alive) — alive while its process holds the lock
    (else the lock is now the caller's, until it closes fd); None if the file is gone."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return fd, True
    return fd, False


def _journal_files(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith(_TMP_PREFIX))
    except FileNotFoundError:
        return []


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
