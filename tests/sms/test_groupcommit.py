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
