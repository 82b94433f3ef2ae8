"""One write per CMP exchange: an ir's certificate, its CMP transaction row and its audit entry
commit in one database transaction (a certConf's finish and its entry likewise); a failure in
any part leaves none of them; a transactionID taken meanwhile is refused without a stored
certificate."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ca import CertificateQuery
from client_sdk import cmp
from client_sdk.cmp import FailureInfo, builders
from sms import db
from sms.cmp.store import SqlTransactionStore
from tests.client_sdk.cmptools import ec_key, name

from .conftest import CT, REF, SECRET, CmpEnv


def _ir(env: CmpEnv, subject: str, *, implicit: bool = True) -> bytes:
    body = cmp.IrBody((builders.cert_request(ec_key(), subject=name(subject)),))
    hdr = builders.request_header(recipient=env.issuing.certificate.subject, implicit_confirm=implicit)
    return cmp.protect_with_pbm(cmp.PKIMessage(hdr, body), SECRET.encode(), sender_kid=REF.encode(),
                                iteration_count=500).encode()


@contextmanager
def _write_transactions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the writing transactions the service commits (every write goes through
    :func:`sms.db.raw_transaction` or :func:`sms.db.transaction`)."""
    count = [0]
    raw, orm = db.raw_transaction, db.transaction

    @contextmanager
    def counting_raw(*a: Any, **kw: Any) -> Iterator[Any]:
        with raw(*a, **kw) as tx:
            yield tx
        count[0] += kw.get("write", True)

    @contextmanager
    def counting_orm(*a: Any, **kw: Any) -> Iterator[Any]:
        with orm(*a, **kw) as s:
            yield s
        count[0] += kw.get("write", True)

    monkeypatch.setattr(db, "raw_transaction", counting_raw)
    monkeypatch.setattr(db, "transaction", counting_orm)
    try:
        yield count
    finally:
        monkeypatch.undo()


def _issued(env: CmpEnv) -> int:
    return len(env.engine.search(CertificateQuery(ca_name="issuing")))


def _error(data: bytes) -> frozenset[FailureInfo]:
    body = cmp.PKIMessage.decode(data).body
    assert isinstance(body, cmp.ErrorBody), type(body).__name__
    return body.status_info.fail_info


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_implicit_ir_commits_certificate_transaction_and_audit_entry_in_one_write(
        env: CmpEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    assert env.client.post("/.well-known/cmp", data=_ir(env, "warm.example.com"), headers=CT).status_code == 200
    entries = len(env.svc.audit.entries())
    with _write_transactions(monkeypatch) as writes:
        r = env.client.post("/.well-known/cmp", data=_ir(env, "one.example.com"), headers=CT)
    assert r.status_code == 200 and isinstance(cmp.PKIMessage.decode(r.data).body, cmp.IpBody)
    assert writes[0] == 1
    new = env.svc.audit.entries()[entries:]
    assert len(new) == 1
    assert new[0]["action"] == "cmp.ir" and new[0]["status"] == 200 and new[0]["actor"] == f"cmp:test:{REF}"
    assert {k: new[0]["detail"].get(k) for k in ("response", "status", "auth", "profile")} == \
        {"response": "ip", "status": "accepted", "auth": "mac", "profile": "test"}
    assert "serial" not in new[0]["detail"]  # CMP's detail, not the certificate insert's
    assert env.svc.audit.verify().ok


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_ir_and_certconf_take_one_write_each(env: CmpEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    class Direct:
        def send(self, request: bytes) -> bytes:
            r = env.client.post("/.well-known/cmp/p/test", data=request, headers=CT)
            assert r.status_code == 200
            return bytes(r.data)

    c = cmp.CmpClient(Direct(), recipient=env.issuing.certificate.subject, secret=SECRET.encode(),
                      reference=REF.encode(), pbm_iterations=500)
    c.ir(ec_key(), subject=name("warm.example.com"))
    entries = len(env.svc.audit.entries())
    with _write_transactions(monkeypatch) as writes:
        got = c.ir(ec_key(), subject=name("conf.example.com"))
    assert not got.implicitly_confirmed
    assert writes[0] == 2
    new = env.svc.audit.entries()[entries:]
    assert [(e["action"], e["detail"].get("response")) for e in new] == [("cmp.ir", "ip"), ("cmp.certConf", "pkiconf")]
    (txn,) = [t for t in env.cmp.transactions.list(profile="test") if t.certificate == got.certificate]
    assert txn.state.value == "finished"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_an_audit_entry_that_cannot_be_added_leaves_no_certificate_and_no_transaction(
        env: CmpEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    assert env.client.post("/.well-known/cmp", data=_ir(env, "warm.example.com"), headers=CT).status_code == 200
    issued, txns = _issued(env), env.cmp.transactions.count()

    from tests.sms.test_audit import _refuse_audit_inserts

    _refuse_audit_inserts(env.svc, True)  # the audit log and its outbox refuse every insert
    try:
        r = env.client.post("/.well-known/cmp", data=_ir(env, "lost.example.com"), headers=CT)
    finally:
        _refuse_audit_inserts(env.svc, False)
    # refused: the write rolled back and the answer says "try later" (systemUnavail); a 503 if
    # the answer's own entry cannot be appended either (audit_sync=commit appends to the chain)
    assert r.status_code == 503 or FailureInfo.SYSTEM_UNAVAIL in _error(r.data)
    assert _issued(env) == issued
    assert env.cmp.transactions.count() == txns
    entry = env.svc.audit.entries()[-1]
    if r.status_code == 200:  # the refused exchange is audited as such
        assert entry["action"] == "cmp.ir" and entry["detail"].get("failure") == "SystemUnavail"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_transaction_id_taken_while_issuing_is_refused_and_its_certificate_not_stored(
        env: CmpEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    msg = _ir(env, "race.example.com")
    assert isinstance(cmp.PKIMessage.decode(env.client.post("/.well-known/cmp", data=msg, headers=CT).data).body,
                      cmp.IpBody)
    issued = _issued(env)
    r = env.client.post("/.well-known/cmp", data=msg, headers=CT)  # a replay: refused before signing
    assert FailureInfo.TRANSACTION_ID_IN_USE in _error(r.data)
    assert _issued(env) == issued
    # the race: the cheap check passes (another process inserts meanwhile), the insert that
    # rides with the certificate collides - certificate and row roll back together
    monkeypatch.setattr(SqlTransactionStore, "in_use", lambda self, profile, tid: False)
    r = env.client.post("/.well-known/cmp", data=msg, headers=CT)
    assert r.status_code == 200 and FailureInfo.TRANSACTION_ID_IN_USE in _error(r.data)
    assert _issued(env) == issued
    assert env.cmp.transactions.count() == 1  # the first ir's
