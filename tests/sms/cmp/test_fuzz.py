"""Thousands of mutated and truncated CMP messages through the Flask app: every answer is a
well-formed CMP message (almost always an error) or an HTTP 4xx problem, never a 500, and
nothing changes: no certificate issued, the transaction table exactly as before.

Seeds are real messages of finished transactions (openssl cmp and the SDK codec: ir, certConf,
cr, p10cr, kur, rr, genm, pollReq, error), so even a mutation that keeps a message valid (e.g. in
the unprotected extraCerts) is a replay and must be refused. Bounded: ``N`` messages, seeded RNG.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import select

from ca import CertificateQuery
from client_sdk import cmp
from sms.cmp.models import CmpTransactionRow
from sms.db import transaction
from tests.client_sdk.cmptools import ec_key, name

from .conftest import REF, SECRET, CmpEnv

#: messages and RNG seed; a deeper local run: CSM_FUZZ_N=50000 CSM_FUZZ_SEED=7 pytest tests/sms/cmp/test_fuzz.py
N = int(os.environ.get("CSM_FUZZ_N", "2000"))
SEED = int(os.environ.get("CSM_FUZZ_SEED", "20260501"))
CT = {"Content-Type": "application/pkixcmp"}


class _Recording:
    def __init__(self, env: CmpEnv) -> None:
        self.env = env
        self.sent: list[bytes] = []

    def send(self, request: bytes) -> bytes:
        self.sent.append(request)
        r = self.env.client.post("/.well-known/cmp/p/test", data=request, headers=CT)
        return bytes(r.data)


def _seeds(env: CmpEnv) -> list[bytes]:
    d = env.dir
    for n in ("k1", "k2", "k3"):
        (d / f"{n}.key").write_bytes(ec_key().private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    outs = []
    r = env.pbm("test", "-cmd", "ir", "-newkey", "k1.key", "-subject", "/CN=fz1.example.com", "-certout", "c1.pem",
                "-reqout", "ir.der,cc.der")
    assert r.returncode == 0, r.stderr
    outs += ["ir.der", "cc.der"]
    r = env.sig("test", "c1.pem", "k1.key", "-cmd", "cr", "-newkey", "k2.key", "-subject", "/CN=fz2.example.com",
                "-certout", "c2.pem", "-reqout", "cr.der,cc2.der")
    assert r.returncode == 0, r.stderr
    outs += ["cr.der", "cc2.der"]
    r = env.sig("test", "c2.pem", "k2.key", "-cmd", "kur", "-newkey", "k3.key", "-certout", "c3.pem",
                "-reqout", "kur.der,cc3.der")
    assert r.returncode == 0, r.stderr
    outs += ["kur.der"]
    csr = x509_csr()
    (d / "p10.csr").write_bytes(csr)
    r = env.sig("test", "c1.pem", "k1.key", "-cmd", "p10cr", "-csr", "p10.csr", "-certout", "c4.pem",
                "-reqout", "p10.der,cc4.der")
    assert r.returncode == 0, r.stderr
    outs += ["p10.der"]
    r = env.sig("test", "c3.pem", "k3.key", "-cmd", "rr", "-oldcert", "c3.pem", "-reqout", "rr.der")
    assert r.returncode == 0, r.stderr
    r = env.sig("test", "c1.pem", "k1.key", "-cmd", "genm", "-reqout", "genm.der")
    assert r.returncode == 0, r.stderr
    outs += ["rr.der", "genm.der"]
    seeds = [(d / f).read_bytes() for f in outs]
    # codec-generated: ir + certConf with SHA-256 PBM, an ir with implicit confirm, a client error
    rec = _Recording(env)
    c = cmp.CmpClient(rec, recipient=env.issuing.certificate.subject, secret=SECRET.encode(), reference=REF.encode(),
                      pbm_iterations=500)
    c.ir(ec_key(), subject=name("fz5.example.com"))
    cmp.CmpClient(rec, recipient=env.issuing.certificate.subject, secret=SECRET.encode(), reference=REF.encode(),
                  pbm_iterations=500, implicit_confirm=True).ir(ec_key(), subject=name("fz6.example.com"))
    seeds += rec.sent
    hdr = cmp.builders.request_header(recipient=env.issuing.certificate.subject, sender_kid=REF.encode())
    for body in (cmp.builders.poll_req_body(0), cmp.builders.error_body(cmp.errors.BadRequest("client gave up"))):
        msg = cmp.protect_with_pbm(cmp.PKIMessage(hdr, body), SECRET.encode(), sender_kid=REF.encode(),
                                   iteration_count=500)
        seeds.append(msg.encode())
    return seeds


def x509_csr() -> bytes:
    from cryptography import x509

    return x509.CertificateSigningRequestBuilder().subject_name(name("fz4.example.com")) \
        .sign(ec_key(), hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    op = rng.randrange(7)
    if op == 0:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncation
        del data[rng.randrange(1, len(data)):]
    elif op == 2:  # splice a chunk of another seed in place of a chunk of this one
        other = rng.choice(seeds)
        a, b = sorted(rng.sample(range(len(other)), 2))
        i = rng.randrange(len(data))
        data[i:i + rng.randint(0, 64)] = other[a:b]
    elif op == 3:  # corrupt a length octet near a tag
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(1, len(data))
            data[i] = rng.choice((0x00, 0x7F, 0x80, 0x81, 0x82, 0x84, 0xFF))
    elif op == 4:  # insert random bytes
        i = rng.randrange(len(data))
        data[i:i] = rng.randbytes(rng.randint(1, 16))
    elif op == 5:  # delete a range
        i = rng.randrange(len(data))
        del data[i:i + rng.randint(1, 32)]
    else:  # duplicate a range
        a, b = sorted(rng.sample(range(len(data)), 2))
        data[b:b] = data[a:min(b, a + 200)]
    return bytes(data) or b"\x00"


def _snapshot(env: CmpEnv) -> tuple[list[tuple[str, str, str, float]], int]:
    with transaction(env.svc.sessions, write=False) as s:
        rows = [tuple(r) for r in s.execute(select(CmpTransactionRow.profile, CmpTransactionRow.transaction_id,
                                                   CmpTransactionRow.state, CmpTransactionRow.updated_at)
                                            .order_by(CmpTransactionRow.transaction_id))]
    return rows, len(env.engine.search(CertificateQuery(ca_name="issuing")))  # type: ignore[return-value]


@pytest.mark.timeout(max(240, N // 50))
def test_mutated_messages_get_cmp_errors_and_change_nothing(shm_cmp_env: CmpEnv) -> None:
    env = shm_cmp_env
    env.profile("test", default=True)
    seeds = _seeds(env)
    assert len(seeds) >= 12
    before = _snapshot(env)
    rng = random.Random(SEED)
    client = env.client
    statuses: dict[int, int] = {}
    bodies: dict[str, int] = {}
    fails: dict[str, int] = {}
    started = time.monotonic()
    for i in range(N):
        data = _mutate(rng, seeds) if i >= len(seeds) else seeds[i]  # the seeds themselves first: replays
        r = client.post("/.well-known/cmp/p/test", data=data, headers=CT)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code in (200, 400, 413), (i, r.status_code, r.data[:200])
        if r.status_code == 200:
            msg = cmp.PKIMessage.decode(bytes(r.data))  # well-formed, or this raises
            kind = msg.body_type.asn1_name
            bodies[kind] = bodies.get(kind, 0) + 1
            if isinstance(msg.body, cmp.ErrorBody):
                for f in msg.body.status_info.fail_info:
                    fails[f.name] = fails.get(f.name, 0) + 1
            if not isinstance(msg.body, cmp.ErrorBody):  # a valid response must still refuse
                assert kind in ("ip", "cp", "kup", "rp", "pollRep", "genp", "pkiconf"), kind
    elapsed = time.monotonic() - started
    assert _snapshot(env) == before
    assert bodies.get("error", 0) >= N * 0.95, bodies
    # systemFailure is the answer to an exception the server did not expect: a bug, not bad input
    assert "SYSTEM_FAILURE" not in fails, fails
    print(f"\nfuzz: {N} messages in {elapsed:.1f} s; HTTP {statuses}; CMP bodies {bodies}; failInfo {fails}")
