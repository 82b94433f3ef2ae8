"""A token that disappears under a running key store: TokenUnavailable (never a crash), other
tokens unaffected, and recovery by itself once the token is back (tests/hsm/faults.py)."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from hsm import HashAlg, HsmError, KeyStore, KeyType, SignatureScheme, TokenUnavailable
from tests.hsm.faults import TokenOutage, token_directory, token_unavailable


def _wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_outage_helper_moves_exactly_one_token_out_and_back(make_token: Any, softhsm_conf: Path) -> None:
    a, b = make_token("fa"), make_token("fb")
    dir_a, dir_b = token_directory(softhsm_conf, a.token_label), token_directory(softhsm_conf, b.token_label)
    with TokenOutage(softhsm_conf, a.token_label) as outage:
        assert not dir_a.exists() and outage.parking.is_dir() and dir_b.is_dir()
        with pytest.raises(LookupError):
            token_directory(softhsm_conf, a.token_label)
    assert dir_a.is_dir() and not outage.parking.exists()


def test_outage_gives_token_unavailable_then_the_same_store_recovers(
        make_token: Any, softhsm_conf: Path, keystore: KeyStore, unique: str) -> None:
    cfg = make_token("outage")
    ks = KeyStore(cfg, backoff=(0.05, 0.2))
    ks.generate("aes", KeyType.AES_256)
    ks.generate("ec", KeyType.EC_P256)
    blob = ks.encrypt("aes", b"before", b"ad")
    pub: Any = ks.public_key("ec")
    ks.sign("ec", b"warm", SignatureScheme.ECDSA, HashAlg.SHA256)
    bystander = f"bystander-{unique}"
    keystore.generate(bystander, KeyType.AES_256)

    with token_unavailable(softhsm_conf, cfg.token_label):
        calls: list[Any] = [
            lambda: ks.encrypt("aes", b"x"),
            lambda: ks.decrypt("aes", blob, b"ad"),
            lambda: ks.sign("ec", b"m", SignatureScheme.ECDSA, HashAlg.SHA256),
            lambda: ks.get("aes"),
            lambda: ks.exists("aes"),
            lambda: ks.list_keys(),
            lambda: ks.generate("new", KeyType.AES_256),
            lambda: ks.destroy("aes"),
        ]
        for call in calls:
            with pytest.raises(TokenUnavailable):
                call()
        status = ks.status()
        assert not status.available and status.token_label == cfg.token_label and status.detail
        time.sleep(0.3)  # a recovery attempt is due now, and fails while the token is away
        with pytest.raises(TokenUnavailable):
            ks.encrypt("aes", b"x")
        assert not ks.status().available
        # Another token of the same module keeps working, across this token's recovery attempts.
        for _ in range(20):
            assert keystore.decrypt(bystander, keystore.encrypt(bystander, b"y")) == b"y"
            time.sleep(0.01)

    _wait_until(lambda: ks.status().available)  # the readiness probe alone brings it back
    assert ks.status().logged_in
    assert ks.decrypt("aes", blob, b"ad") == b"before"
    sig = ks.sign("ec", b"after", SignatureScheme.ECDSA, HashAlg.SHA256)
    pub.verify(sig, b"after", ec.ECDSA(hashes.SHA256()))
    assert {k.label for k in ks.list_keys()} == {"aes", "ec"}
    ks.close()


def test_outage_under_concurrent_load_never_crashes_and_recovers(make_token: Any, softhsm_conf: Path) -> None:
    cfg = make_token("loadout")
    ks = KeyStore(cfg, backoff=(0.05, 0.2))
    ks.generate("aes", KeyType.AES_256)
    ks.generate("ec", KeyType.EC_P256)
    stop = threading.Event()
    outcomes: dict[str, int] = {"ok": 0, "unavailable": 0}
    unexpected: list[BaseException] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        while not stop.is_set():
            try:
                if i % 2:
                    assert ks.decrypt("aes", ks.encrypt("aes", b"z")) == b"z"
                else:
                    ks.sign("ec", b"m", SignatureScheme.ECDSA, HashAlg.SHA256)
                key = "ok"
            except TokenUnavailable:
                key = "unavailable"
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                with lock:
                    unexpected.append(exc)
                return
            with lock:
                outcomes[key] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        with token_unavailable(softhsm_conf, cfg.token_label):
            time.sleep(0.5)
            during = dict(outcomes)
        _wait_until(lambda: ks.status().available)
        before_ok = outcomes["ok"]
        _wait_until(lambda: outcomes["ok"] > before_ok + 50)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not unexpected, unexpected[:3]
    assert during["unavailable"] > 0 and outcomes["ok"] > during["ok"]
    assert all(not t.is_alive() for t in threads)
    ks.close()


def test_token_gone_before_the_first_open_is_an_hsm_error_not_a_crash(make_token: Any, softhsm_conf: Path) -> None:
    cfg = make_token("neveropen")
    with token_unavailable(softhsm_conf, cfg.token_label):
        with pytest.raises(HsmError):
            KeyStore(cfg).open()
        assert not KeyStore(cfg).status().available
    with KeyStore(cfg) as ks:
        assert ks.status().available


def _child_through_outage(ks: KeyStore, gone: Any, back: Any, out: Any) -> None:
    try:
        gone.wait(10)
        try:
            ks.encrypt("aes", b"x")
            out.put("no error while the token was away")
            return
        except TokenUnavailable:
            pass
        assert not ks.status().available
        out.put("saw-outage")
        back.wait(10)
        deadline = time.monotonic() + 5
        while True:
            try:
                out.put(ks.decrypt("aes", ks.encrypt("aes", b"child"))[:0] + b"child-ok")
                return
            except TokenUnavailable:
                assert time.monotonic() < deadline, "no recovery in the child"
                time.sleep(0.05)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        out.put(repr(exc))


def test_forked_child_of_an_open_store_sees_the_outage_and_recovers(make_token: Any, softhsm_conf: Path) -> None:
    import multiprocessing

    cfg = make_token("forkout")
    ks = KeyStore(cfg, backoff=(0.05, 0.2))
    ks.generate("aes", KeyType.AES_256)
    ctx: Any = multiprocessing.get_context("fork")
    gone, back, out = ctx.Event(), ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_child_through_outage, args=(ks, gone, back, out))
    child.start()
    try:
        with token_unavailable(softhsm_conf, cfg.token_label):
            gone.set()
            assert out.get(timeout=20) == "saw-outage"
        back.set()
        assert out.get(timeout=20) == b"child-ok"
    finally:
        back.set()
        child.join(20)
    assert child.exitcode == 0
    _wait_until(lambda: ks.status().available)
    ks.close()
