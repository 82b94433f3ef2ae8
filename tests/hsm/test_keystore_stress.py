"""Concurrency: threads sharing one key store, and worker processes (fork and spawn) using a
key store that the parent opened before they started."""
from __future__ import annotations

import multiprocessing
import os
import random
import threading
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from hsm import (
    DuplicateLabel,
    HashAlg,
    KeyNotFound,
    KeyStore,
    KeyType,
    SignatureScheme,
)

THREADS = 8
OPS_PER_THREAD = 120
TIME_BOUND = 25.0  # seconds; the whole mix normally takes 1-3 s


@pytest.fixture(scope="module")
def stress_keys(keystore: KeyStore) -> dict[str, str]:
    labels = {"rsa": "stress-rsa", "ec": "stress-ec", "aes": "stress-aes"}
    types = {"rsa": KeyType.RSA_2048, "ec": KeyType.EC_P256, "aes": KeyType.AES_256}
    for kind, label in labels.items():
        if not keystore.exists(label):
            keystore.generate(label, types[kind])
    return labels


def _mixed_load(ks: KeyStore, keys: dict[str, str], *, threads: int, ops: int, seed: int) -> float:
    """Run ``threads`` threads of ``ops`` random operations each; return the wall time.
    Fails on any error, any bad signature or plaintext, or a blown time bound."""
    pub_rsa: Any = ks.public_key(keys["rsa"])
    pub_ec: Any = ks.public_key(keys["ec"])
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)
    deadline = time.monotonic() + TIME_BOUND
    done = [0] * threads

    def work(idx: int) -> None:
        rng = random.Random(seed + idx)
        try:
            barrier.wait()
            for n in range(ops):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"thread {idx} over the time bound after {n} ops")
                msg = rng.randbytes(rng.randrange(1, 300))
                op = rng.random()
                if op < 0.15:
                    pss = rng.random() < 0.5
                    scheme = SignatureScheme.RSA_PSS if pss else SignatureScheme.RSA_PKCS1V15
                    sig = ks.sign(keys["rsa"], msg, scheme, HashAlg.SHA256)
                    pad = padding.PSS(padding.MGF1(hashes.SHA256()), 32) if pss else padding.PKCS1v15()
                    pub_rsa.verify(sig, msg, pad, hashes.SHA256())
                elif op < 0.45:
                    sig = ks.sign(keys["ec"], msg, SignatureScheme.ECDSA, HashAlg.SHA384)
                    pub_ec.verify(sig, msg, ec.ECDSA(hashes.SHA384()))
                elif op < 0.85:
                    aad = rng.randbytes(8)
                    assert ks.decrypt(keys["aes"], ks.encrypt(keys["aes"], msg, aad), aad) == msg
                else:
                    label = f"churn-{seed}-{idx}-{n}"
                    kind = KeyType.EC_P256 if rng.random() < 0.5 else KeyType.AES_256
                    ks.generate(label, kind)
                    if kind is KeyType.AES_256:
                        assert ks.decrypt(label, ks.encrypt(label, msg)) == msg
                    else:
                        pub: Any = ks.public_key(label)
                        pub.verify(ks.sign(label, msg, SignatureScheme.ECDSA, HashAlg.SHA256), msg,
                                   ec.ECDSA(hashes.SHA256()))
                    ks.destroy(label)
                    try:
                        ks.encrypt(label, msg)
                        raise AssertionError("a destroyed key was still usable")
                    except KeyNotFound:
                        pass
                done[idx] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    started = time.monotonic()
    workers = [threading.Thread(target=work, args=(i,), name=f"stress-{i}") for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(TIME_BOUND + 5)
    elapsed = time.monotonic() - started
    assert not any(t.is_alive() for t in workers), "a worker thread hung"
    assert not errors, errors[:3]
    assert done == [ops] * threads
    return elapsed


@pytest.mark.parametrize("round_", range(3))
def test_eight_threads_mixing_signing_encryption_and_key_churn(keystore: KeyStore, stress_keys: dict[str, str],
                                                               round_: int) -> None:
    elapsed = _mixed_load(keystore, stress_keys, threads=THREADS, ops=OPS_PER_THREAD, seed=1000 * round_)
    assert elapsed < TIME_BOUND
    assert keystore.status().available


def test_eight_threads_in_global_lock_mode(make_token: Any) -> None:
    with KeyStore(make_token("stress-global"), lock_mode="global") as ks:
        keys = {"rsa": "r", "ec": "e", "aes": "a"}
        ks.generate("r", KeyType.RSA_2048)
        ks.generate("e", KeyType.EC_P256)
        ks.generate("a", KeyType.AES_256)
        _mixed_load(ks, keys, threads=THREADS, ops=40, seed=7)


def test_threads_racing_for_one_label_create_it_exactly_once(keystore: KeyStore, unique: str) -> None:
    label = f"race-{unique}"
    barrier = threading.Barrier(THREADS)
    results: list[str] = []

    def create() -> None:
        barrier.wait()
        try:
            keystore.generate(label, KeyType.AES_256)
            results.append("created")
        except DuplicateLabel:
            results.append("duplicate")

    workers = [threading.Thread(target=create) for _ in range(THREADS)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(20)
    assert sorted(results) == ["created"] + ["duplicate"] * (THREADS - 1)
    assert [k.label for k in keystore.list_keys()].count(label) == 1


# -- processes -------------------------------------------------------------------------------------

def _process_worker(ks: KeyStore, keys: dict[str, str], tag: str, out: Any) -> None:
    """Runs in a child process: uses the store it was handed (inherited or unpickled)."""
    try:
        from hsm import _p11

        msg = tag.encode()
        sig = ks.sign(keys["ec"], msg, SignatureScheme.ECDSA, HashAlg.SHA256)
        blob = ks.encrypt(keys["aes"], msg, b"proc")
        assert ks.decrypt(keys["aes"], blob, b"proc") == msg
        own = f"{tag}-own"
        ks.generate(own, KeyType.EC_P256)
        ks.destroy(own)
        # A few threads inside the child too: its context has locking on.
        threads = [threading.Thread(target=lambda: [ks.encrypt(keys["aes"], msg) for _ in range(50)])
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out.put(("ok", tag, os.getpid(), _p11._INIT_PID[ks.config.module_path], sig, blob))
    except BaseException as exc:  # noqa: BLE001 - sent to the parent
        out.put(("error", tag, os.getpid(), repr(exc), b"", b""))


def _race_worker(ks: KeyStore, label: str, out: Any) -> None:
    try:
        ks.generate(label, KeyType.EC_P256)
        out.put("created")
    except DuplicateLabel:
        out.put("duplicate")
    except BaseException as exc:  # noqa: BLE001
        out.put(repr(exc))


def _run_processes(method: str, target: Any, args_for: Any, count: int) -> list[Any]:
    ctx: Any = multiprocessing.get_context(method)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(i), out)) for i in range(count)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return results


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_processes_reinitialise_and_use_the_parents_store(
        keystore: KeyStore, stress_keys: dict[str, str], method: str) -> None:
    # The parent's store is open and warm (login, pooled sessions, cached handles) before forking.
    keystore.encrypt(stress_keys["aes"], b"warm")
    keystore.sign(stress_keys["ec"], b"warm", SignatureScheme.ECDSA, HashAlg.SHA256)
    count = 3 if method == "fork" else 2
    results = _run_processes(method, _process_worker,
                             lambda i: (keystore, stress_keys, f"{method}-{i}-{os.getpid()}"), count)
    pub: Any = keystore.public_key(stress_keys["ec"])
    pids = set()
    for status, tag, pid, init_pid, sig, blob in results:
        assert status == "ok", init_pid
        assert pid != os.getpid() and init_pid == pid  # the child initialised its own context
        pids.add(pid)
        pub.verify(sig, tag.encode(), ec.ECDSA(hashes.SHA256()))
        assert keystore.decrypt(stress_keys["aes"], blob, b"proc") == tag.encode()
    assert len(pids) == count
    assert keystore.status().available  # the parent's context is untouched


def test_processes_racing_for_one_label_never_both_win(keystore: KeyStore, unique: str) -> None:
    label = f"prace-{unique}"
    keystore.exists(label)  # open before fork
    results = _run_processes("fork", _race_worker, lambda i: (keystore, label), 4)
    assert set(results) <= {"created", "duplicate"}, results
    created = results.count("created")
    assert created <= 1
    assert sum(1 for k in keystore.list_keys() if k.label == label) == created
