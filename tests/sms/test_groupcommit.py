"""Group commit (leader/follower): batching, per-caller outcomes, failures and time-outs."""
from __future__ import annotations

import threading
import time

import pytest

from sms.groupcommit import GroupCommit, GroupCommitError, GroupCommitTimeout


def test_concurrent_submits_share_batches_and_each_gets_its_own_result():
    batches: list[list[int]] = []

    def commit(items):
        time.sleep(0.01)  # a slow commit lets the others queue up
        batches.append(list(items))
        return [i * 10 for i in items]

    gc: GroupCommit[int, int] = GroupCommit(commit)
    results: dict[int, int] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, gc.submit(i))) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {i: i * 10 for i in range(40)}
    assert sorted(i for b in batches for i in b) == list(range(40))  # each item committed exactly once
    assert len(batches) < 40 and gc.batches == len(batches) and gc.items == 40


def test_a_failed_commit_fails_every_caller_of_that_batch_and_only_them():
    calls = 0

    def commit(items):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk gone")
        return list(items)

    gc: GroupCommit[str, str] = GroupCommit(commit)
    with pytest.raises(GroupCommitError) as info:
        gc.submit("first")
    assert isinstance(info.value.__cause__, OSError)
    assert gc.submit("second") == "second"  # the next batch is unaffected


def test_batches_never_exceed_max_batch():
    sizes: list[int] = []
    gate = threading.Event()

    def commit(items):
        gate.wait(5)
        sizes.append(len(items))
        return list(items)

    gc: GroupCommit[int, int] = GroupCommit(commit, max_batch=3)
    threads = [threading.Thread(target=gc.submit, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(10)
    assert sum(sizes) == 10 and max(sizes) <= 3


def test_a_waiter_that_times_out_is_withdrawn_and_never_committed():
    committed: list[str] = []
    release = threading.Event()

    def commit(items):
        if "slow" in items:
            release.wait(5)
        committed.extend(items)
        return list(items)

    gc: GroupCommit[str, str] = GroupCommit(commit, timeout=0.2)
    leader = threading.Thread(target=gc.submit, args=("slow",))
    leader.start()
    time.sleep(0.05)  # "slow" is being committed; "late" queues behind it and times out
    with pytest.raises(GroupCommitTimeout):
        gc.submit("late")
    release.set()
    leader.join(5)
    assert committed == ["slow"]
    assert gc.submit("after") == "after"  # leadership was not lost with the withdrawn waiter
    assert committed == ["slow", "after"]


def test_items_queued_while_the_leader_waits_at_the_gate_join_its_batch():
    from contextlib import contextmanager

    open_gate, at_gate = threading.Event(), threading.Event()
    held: list[bool] = []
    inside = [False]

    @contextmanager
    def gate():
        at_gate.set()
        open_gate.wait(10)  # another process's commit holds the write lock
        inside[0] = True
        try:
            yield
        finally:
            inside[0] = False

    def commit(items):
        held.append(inside[0])
        return list(items)

    gc: GroupCommit[int, int] = GroupCommit(commit, gate=gate)
    results: dict[int, int] = {}
    leader = threading.Thread(target=lambda: results.__setitem__(0, gc.submit(0)))
    leader.start()
    assert at_gate.wait(10)
    others = [threading.Thread(target=lambda i=i: results.__setitem__(i, gc.submit(i))) for i in range(1, 6)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while len(gc._queue) < 6 and time.monotonic() < deadline:  # all six queued behind the gate
        time.sleep(0.005)
    open_gate.set()
    for t in [leader, *others]:
        t.join(10)
    assert results == {i: i for i in range(6)}
    assert gc.batches == 1 and gc.items == 6 and held == [True]  # one commit, inside the gate


def test_a_gate_that_fails_fails_its_batch_and_the_next_one_proceeds():
    from contextlib import contextmanager

    fail = [True]

    @contextmanager
    def gate():
        if fail[0]:
            fail[0] = False
            raise OSError("lock file gone")
        yield

    gc: GroupCommit[int, int] = GroupCommit(lambda items: list(items), gate=gate)
    with pytest.raises(GroupCommitError) as info:
        gc.submit(1)
    assert isinstance(info.value.__cause__, OSError)
    assert gc.submit(2) == 2 and gc.items == 1
