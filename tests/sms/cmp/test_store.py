"""CMP storage on SQLite and PostgreSQL: profiles with sealed shared secrets, and the SQL
TransactionStore (uniqueness enforced by the database, full round trip of every field)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import select, update

import hsm
from ca.cmp import AuthKind, IssueRequest, Requester, Transaction, TransactionState
from client_sdk.cmp import BodyType, errors
from sms.cmp.errors import CmpProfileExists, CmpProfileNotFound, InvalidCmpProfile
from sms.cmp.models import CmpSecretRow
from sms.cmp.store import (
    CmpProfile,
    RequestProtection,
    SecretSealer,
    SqlCmpProfileStore,
    SqlTransactionStore,
)
from sms import db
from sms.db import transaction
from sms.errors import Conflict
from tests.client_sdk.cmptools import TestPki, ec_key, name

SECRET = "pbm-Secret-" + "x7Qz9"


@pytest.fixture
def profiles(services):
    return SqlCmpProfileStore(services.sessions, SecretSealer(services.keystore))


@pytest.fixture
def store(services):
    return SqlTransactionStore(services.sessions)


def test_profile_round_trip_with_write_only_secrets(profiles, tmp_path: Path) -> None:
    pki = TestPki(tmp_path, "Anchor CA")
    created = profiles.create(CmpProfile(name="onap", ca="issuing", cert_profile="tls-mutual", default=True,
                                         confirm_timeout=60, approval_required=True,
                                         request_protection=RequestProtection.SIGNATURE,
                                         trust_anchors=(pki.ca_cert,)),
                              {"nf-ref": SECRET, "other-ref": b"another-secret"})
    assert created.secret_references == ("nf-ref", "other-ref")
    assert created.trust_anchors == (pki.ca_cert,) and created.version == 1
    assert created.request_protection is RequestProtection.SIGNATURE and created.confirm_timeout == 60
    assert SECRET not in repr(created)
    sealed = profiles.sealed_secrets("onap")
    assert sealed[b"nf-ref"] == SECRET.encode() and set(sealed) == {b"nf-ref", b"other-ref"}
    assert SECRET not in repr(sealed)
    with pytest.raises(CmpProfileExists):
        profiles.create(CmpProfile(name="onap", ca="issuing", cert_profile="tls-server"))
    second = profiles.create(CmpProfile(name="lab", ca="issuing", cert_profile="tls-server", default=True))
    assert second.default and not profiles.get("onap").default  # one default at a time
    assert profiles.get_default().name == "lab"
    upd = profiles.update("onap", {"implicit_confirm": False, "default": True}, set_secrets={"nf-ref": "rotated-secret"},
                          remove_secrets=["other-ref"], expected_version=1)
    assert (upd.version, upd.implicit_confirm, upd.default, upd.secret_references) == (2, False, True, ("nf-ref",))
    assert profiles.sealed_secrets("onap")[b"nf-ref"] == b"rotated-secret"
    assert not profiles.get("lab").default
    with pytest.raises(Conflict):
        profiles.update("onap", {"poll_interval": 3}, expected_version=1)
    assert [p.name for p in profiles.list()] == ["lab", "onap"]
    profiles.delete("onap")
    with pytest.raises(CmpProfileNotFound):
        profiles.get("onap")
    assert profiles.sealed_secrets("onap") == {}


@pytest.mark.parametrize("bad", [
    {"name": "Bad Name"}, {"confirm_timeout": 1}, {"poll_interval": 0}, {"implicit_confirm": "yes"},
    {"response_pbm_iterations": 10 ** 7}, {"ca": "no/slash"},
])
def test_invalid_profiles_are_refused(profiles, bad) -> None:
    base = dict(name="p", ca="issuing", cert_profile="tls-server")
    with pytest.raises(InvalidCmpProfile):
        profiles.create(CmpProfile(**{**base, **bad}))


@pytest.mark.parametrize("ref,secret", [("has space", SECRET), ("ok", "short"), ("", SECRET), ("ok", "x" * 2000)])
def test_invalid_secrets_are_refused(profiles, ref, secret) -> None:
    with pytest.raises(InvalidCmpProfile):
        profiles.create(CmpProfile(name="p", ca="issuing", cert_profile="tls-server"), {ref: secret})


def test_shared_secret_is_not_stored_in_plaintext_and_is_bound_to_its_row(make_services, profiles) -> None:
    svc = make_services("sqlite")
    store = SqlCmpProfileStore(svc.sessions, SecretSealer(svc.keystore))
    marker = "plaintext-marker-" + "9f3a1c77e2"
    store.create(CmpProfile(name="a", ca="issuing", cert_profile="tls-server"), {"ref-a": marker, "ref-b": SECRET})
    store.create(CmpProfile(name="b", ca="issuing", cert_profile="tls-server"), {"ref-a": SECRET})
    svc.engine.dispose()
    db_file = Path(svc.settings.effective_database_url.removeprefix("sqlite:///"))
    raw = b"".join(p.read_bytes() for p in db_file.parent.glob(db_file.name + "*"))
    assert marker.encode() not in raw and SECRET.encode() not in raw
    # a ciphertext moved to another reference or profile does not decrypt (AAD binds both)
    with transaction(svc.sessions) as s:
        blob = s.scalar(select(CmpSecretRow.ciphertext).where(CmpSecretRow.profile == "a",
                                                                CmpSecretRow.reference == "ref-a"))
        s.execute(update(CmpSecretRow).where(CmpSecretRow.profile == "a", CmpSecretRow.reference == "ref-b")
                  .values(ciphertext=blob))
        s.execute(update(CmpSecretRow).where(CmpSecretRow.profile == "b").values(ciphertext=blob))
    assert store.sealed_secrets("a")[b"ref-a"] == marker.encode()
    with pytest.raises(hsm.DecryptionFailed):
        store.sealed_secrets("a")[b"ref-b"]
    with pytest.raises(hsm.DecryptionFailed):
        store.sealed_secrets("b")[b"ref-a"]


def _txn(pki: TestPki, tid: bytes, **kw) -> Transaction:
    key = ec_key()
    signer_key, signer = pki.entity("signer", "nf-signer")
    csr = x509.CertificateSigningRequestBuilder().subject_name(name("nf-csr")).sign(key, hashes.SHA256())
    requester = Requester("onap", AuthKind.SIGNATURE, x509.DirectoryName(signer.subject), b"\x01\x02", signer)
    san = x509.Extension(x509.SubjectAlternativeName.oid, False,
                         x509.SubjectAlternativeName([x509.DNSName("nf.example")]))
    req = IssueRequest("onap", BodyType.P10CR, name("nf-csr"), key.public_key(), requester, (san,),
                       not_after=dt.datetime(2031, 1, 1, tzinfo=dt.timezone.utc), old_certificate=signer, csr=csr)
    base = dict(transaction_id=tid, profile="onap", state=TransactionState.PENDING_APPROVAL, requester=requester,
                request_type=BodyType.P10CR, server_nonce=b"n" * 16,
                created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0), cert_req_id=0, issue_request=req)
    return Transaction(**{**base, **kw})


def test_transaction_round_trip_and_database_enforced_uniqueness(store, services, tmp_path: Path) -> None:
    pki = TestPki(tmp_path, "Txn CA")
    txn = _txn(pki, b"T" * 16)
    store.begin(txn)
    got = store.lookup("onap", b"T" * 16)
    assert got == txn
    with pytest.raises(errors.TransactionIdInUse):
        store.begin(dataclasses.replace(txn, state=TransactionState.FINISHED))
    # a second store over the same database (another worker) is refused as well
    with pytest.raises(errors.TransactionIdInUse):
        SqlTransactionStore(services.sessions).begin(txn)
    store.begin(dataclasses.replace(txn, profile="other"))  # the ID is unique per profile
    cert = pki.issue(name("nf-csr"), ec_key().public_key())
    deadline = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(seconds=5)
    issued = dataclasses.replace(got, state=TransactionState.WAITING_CONFIRM, certificate=cert,
                                 chain=(pki.ca_cert, pki.ca_cert), confirm_deadline=deadline, server_nonce=b"m" * 16)
    store.update(issued)
    assert store.lookup("onap", b"T" * 16) == issued
    assert [t.transaction_id for t in store.unconfirmed_before(dt.datetime.now(dt.timezone.utc))] == [b"T" * 16]
    assert store.unconfirmed_before(deadline - dt.timedelta(seconds=1)) == []
    assert not store.transition("onap", b"T" * 16, TransactionState.PENDING_APPROVAL, TransactionState.APPROVED)
    assert store.transition("onap", b"T" * 16, TransactionState.WAITING_CONFIRM, TransactionState.FINISHED, "late")
    assert store.lookup("onap", b"T" * 16).reason == "late"
    assert store.purge_finished(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)) == 1
    assert store.lookup("onap", b"T" * 16) is None and store.count() == 1
    assert store.lookup("onap", b"x" * 500) is None
    with pytest.raises(errors.BadRequest):
        store.begin(_txn(pki, b"x" * 500))


def test_concurrent_begin_with_one_transaction_id_has_one_winner(store, tmp_path: Path) -> None:
    pki = TestPki(tmp_path, "Race CA")
    txn = _txn(pki, b"R" * 20)
    wins, losses = [], []
    barrier = threading.Barrier(6)

    def go() -> None:
        barrier.wait()
        try:
            store.begin(txn)
            wins.append(1)
        except errors.TransactionIdInUse:
            losses.append(1)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert (len(wins), len(losses)) == (1, 5)


def test_staged_transaction_rides_with_the_next_write_or_is_flushed(store, tmp_path: Path) -> None:
    """Within an exchange, stage() leaves the row for the write that takes it (the service
    attaches it to the certificate's insert); flush_staged() writes what nobody took; a direct
    write replaces what was staged; outside an exchange stage() writes at once."""
    pki = TestPki(tmp_path, "Stage CA")
    a, b, c = (_txn(pki, tid * 16, state=TransactionState.FINISHED) for tid in (b"A", b"B", b"C"))
    with store.exchange() as stage:
        store.stage(a, new=True)
        assert store.lookup("onap", a.transaction_id) is None and store.in_use("onap", a.transaction_id) is False
        unit = stage.take()
        assert unit is not None and stage.take() is unit  # a retried write takes it again
        db.writer(store._sessions).run(unit)  # the carrying write
        store.flush_staged()  # taken: nothing more written (a second insert would collide)
    assert store.lookup("onap", a.transaction_id) == a and store.in_use("onap", a.transaction_id)
    with store.exchange():
        store.stage(b, new=True)
        store.flush_staged()  # nobody took it: written now
    assert store.lookup("onap", b.transaction_id) == b
    with store.exchange() as stage:
        store.stage(c, new=True)
        store.begin(dataclasses.replace(c, reason="refused"))  # replaces the staged row
        assert stage.take() is None
        store.flush_staged()
    assert store.lookup("onap", c.transaction_id).reason == "refused"
    store.stage(dataclasses.replace(a, transaction_id=b"D" * 16), new=True)  # no exchange: at once
    assert store.in_use("onap", b"D" * 16)
    with pytest.raises(errors.BadRequest):
        store.in_use("onap", b"x" * 500)
