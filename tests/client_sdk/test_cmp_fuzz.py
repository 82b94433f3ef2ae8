"""Malformed input never escapes as anything but a CmpError: mutations of real openssl messages
(bit flips, truncations, insertions, length-byte damage, splices) and arbitrary bytes."""
from __future__ import annotations

import os
import random
import time

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_sdk import cmp
from client_sdk.cmp import errors

from .conftest import SECRET, Captured

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

# a deeper local run: CSM_FUZZ_N=300000 CSM_FUZZ_SECONDS=600 CSM_FUZZ_SEED=7 pytest tests/client_sdk/test_cmp_fuzz.py
MUTATIONS = int(os.environ.get("CSM_FUZZ_N", "5000"))
TIME_BUDGET = float(os.environ.get("CSM_FUZZ_SECONDS", "15"))  # the loop stops early rather than slow the suite
SEED = int(os.environ.get("CSM_FUZZ_SEED", "20240607"))


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    op = rng.randrange(7)
    i = rng.randrange(len(b))
    if op == 0:
        b[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        b[i] = rng.choice([0x00, 0x80, 0x81, 0x82, 0x84, 0xFF, 0x30, 0xA0, 0x05])
    elif op == 2:
        del b[i:i + rng.randrange(1, 16)]
    elif op == 3:
        b[i:i] = rng.randbytes(rng.randrange(1, 8))
    elif op == 4:
        b = b[:i]
    elif op == 5:
        other = rng.choice(pool)
        j = rng.randrange(len(other))
        b[i:i + rng.randrange(1, 64)] = other[j:j + rng.randrange(1, 64)]
    else:
        for _ in range(rng.randrange(2, 6)):
            k = rng.randrange(len(b))
            b[k] = rng.randrange(256)
    return bytes(b)


def _exercise(der: bytes) -> str:
    """Decode and use the message the way a server would; return the outcome class name."""
    try:
        msg = cmp.PKIMessage.decode(der)
        kind = cmp.protection_kind(msg)
        if kind is cmp.ProtectionKind.MAC:
            cmp.verify_pbm(msg, SECRET, max_iterations=5000)
        elif kind is cmp.ProtectionKind.SIGNATURE:
            signer = cmp.protection_certificate(msg)
            if signer is not None:
                cmp.verify_signature(msg, signer)
        if isinstance(msg.body, cmp.CertReqMessagesBody):
            for r in msg.body.requests:
                cmp.verify_pop(r)
        msg.encode()
        _ = msg.header.implicit_confirm, msg.header.confirm_wait_time
        return "ok"
    except errors.CmpError as exc:
        return type(exc).__name__


def test_thousands_of_mutations_of_openssl_messages_raise_only_cmp_errors(captured: Captured) -> None:
    rng = random.Random(SEED)
    pool = [m for _, m in captured.all()]
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + TIME_BUDGET
    n = 0
    while n < MUTATIONS and time.monotonic() < deadline:
        der = _mutate(rng, rng.choice(pool), pool)
        outcome = _exercise(der)  # anything but CmpError propagates and fails the test
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        n += 1
    assert n >= 1000, f"only {n} mutations within the time budget"
    assert outcomes.get("BadDataFormat", 0) > n // 4, outcomes
    assert outcomes.get("BadMessageCheck", 0) > 0, outcomes  # decodable but tampered


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_cmp_errors(data: bytes) -> None:
    _exercise(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=40), st.integers(min_value=0, max_value=5000))
def test_splices_into_a_valid_message_raise_only_cmp_errors(captured: Captured, chunk: bytes, where: int) -> None:
    base = captured.req("cr")
    i = where % len(base)
    _exercise(base[:i] + chunk + base[i + len(chunk):])
