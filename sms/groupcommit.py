"""Group commit: many threads hand in one item each; one of them commits a whole batch.

Leader/follower, as LevelDB's write queue: the first thread to arrive while no commit is in
progress becomes the leader and commits every item queued so far (up to ``max_batch``) in one
call; the others wait on their own slot. When the leader is done it wakes its batch and, if
more items queued up meanwhile, promotes the oldest waiter to lead the next batch. There is no
background thread, so nothing has to be started, stopped or re-created after a fork.

Every caller gets the outcome of *its* batch: the commit's result for its item, or a
:class:`GroupCommitError` caused by the commit's exception (fail-closed: nobody is told
"recorded" unless the batch committed). A caller that waits longer than ``timeout`` gets :class:`GroupCommitTimeout`;
if its item was still queued it is withdrawn, so it is never committed after the refusal.

``gate`` (optional) is a context manager factory the leader enters *before* it takes the
batch and leaves after the commit — the database write lock, say. Items that queue while the
leader waits at the gate (behind another process's commit) join its batch instead of forming
the next one: fewer, larger commits exactly when commits are the bottleneck, at no extra latency.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_QUEUED, _TAKEN, _WITHDRAWN = 0, 1, 2


class GroupCommitError(Exception):
    """The batch holding this item did not commit; ``__cause__`` is the commit's exception."""


class GroupCommitTimeout(GroupCommitError, TimeoutError):
    """The batch holding this item did not commit in time."""


class _Slot(Generic[T, R]):
    """One submitted item. ``done`` is a lock taken at creation and released to wake the
    waiter (lighter than an Event: no condition variable)."""

    __slots__ = ("item", "done", "lead", "state", "result", "error")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = threading.Lock()
        self.done.acquire()
        self.lead = False
        self.state = _QUEUED
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Batch ``submit`` calls from many threads into calls of ``commit(items) -> results``."""

    def __init__(self, commit: Callable[[Sequence[T]], Sequence[R]], *, max_batch: int = 256,
                 timeout: float = 10.0, gate: Callable[[], AbstractContextManager[Any]] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._commit = commit
        self._max_batch = max_batch
        self._timeout = timeout
        self._mutex = threading.Lock()
        self._queue: deque[_Slot[T, R]] = deque()
        self._busy = False
        self._gate = gate
        self.batches = 0  # statistics (tests, benchmarks)
        self.items = 0

    def submit(self, item: T) -> R:
        """Queue ``item`` and return its result once its batch has committed (or raise)."""
        slot: _Slot[T, R] = _Slot(item)
        with self._mutex:
            self._queue.append(slot)
            if not self._busy:
                self._busy = slot.lead = True
        if not slot.lead:
            self._wait(slot)
        if slot.lead and slot.state == _QUEUED:
            self._lead()
        if slot.error is not None:
            # A fresh exception per waiter: one instance raised in many threads would share
            # (and keep rewriting) a single traceback.
            raise GroupCommitError(f"the batch did not commit: {type(slot.error).__name__}") from slot.error
        return slot.result  # type: ignore[return-value]

    def _wait(self, slot: _Slot[T, R]) -> None:
        if slot.done.acquire(timeout=self._timeout):
            return
        with self._mutex:
            if slot.lead:  # promoted just now (its lock was released under this mutex): lead after all
                slot.done.acquire()
                return
            if slot.state == _QUEUED:
                self._queue.remove(slot)
                slot.state = _WITHDRAWN
                raise GroupCommitTimeout("the batch did not commit in time")
        # Taken by a leader whose commit is still running: give it one more period.
        if not slot.done.acquire(timeout=self._timeout):
            raise GroupCommitTimeout("the batch did not commit in time")

    def _lead(self) -> None:
        batch: list[_Slot[T, R]] = []
        try:
            with self._gate() if self._gate is not None else nullcontext():
                # Drained only once through the gate: what queued while the leader waited
                # there (another process's commit) joins this batch.
                batch = self._take()
                results = self._commit([s.item for s in batch])
            if len(results) != len(batch):  # pragma: no cover - a broken commit function
                raise RuntimeError("group commit returned the wrong number of results")
            for s, r in zip(batch, results, strict=True):
                s.result = r
            self.batches += 1
            self.items += len(batch)
        except BaseException as exc:  # noqa: BLE001 - every waiter must learn the outcome
            if not batch:  # the gate failed: this batch fails with it
                batch = self._take()
            for s in batch:
                s.error = exc
        finally:
            with self._mutex:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.done.release()
                else:
                    self._busy = False
            for s in batch:
                s.done.release()

    def _take(self) -> list[_Slot[T, R]]:
        with self._mutex:
            n = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            for s in batch:
                s.state = _TAKEN
        return batch
