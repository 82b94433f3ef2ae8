"""The repository contract (ca.repository) holds alike for the in-memory reference and the SQL
store on SQLite and PostgreSQL: same records out as in, same errors, same ordering."""
from __future__ import annotations

import datetime as dt
import threading
from dataclasses import replace
from typing import Any

import pytest

from ca import (
    CaExists,
    CaNotFound,
    CaRecord,
    CaSettings,
    CertificateQuery,
    CertificateRecord,
    CertStatus,
    ConcurrentUpdate,
    CrlRecord,
    DuplicateSerial,
    ProfileNotFound,
    Revocation,
    RevocationReason,
    SignatureKind,
    UnknownSerial,
    UsageRecord,
    builtin_profiles,
    random_serial,
)

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def ca_record(name: str = "root") -> CaRecord:
    return CaRecord(name=name, key_label=f"ca-{name}", certificate_der=b"\x30\x03\x02\x01\x01", created_at=NOW,
                    chain_der=(b"\x30\x01\x00", b"\x30\x02\x00\x00") if name != "root" else (),
                    parent="root" if name != "root" else None,
                    settings=CaSettings(crl_validity=dt.timedelta(days=2), crl_renew_before=dt.timedelta(hours=3)))


def cert(serial: int | None = None, *, ca: str = "root", profile: str = "tls-server", requester: str = "alice",
         subject: str = "CN=web.example.com", sans: tuple[str, ...] = ("DNS:web.example.com",),
         not_after: dt.datetime | None = None, issued_at: dt.datetime = NOW, renewal_of: int | None = None) -> CertificateRecord:
    return CertificateRecord(serial=serial or random_serial(), ca_name=ca, profile=profile, requester=requester,
                             subject=subject, sans=sans, not_before=NOW - dt.timedelta(minutes=1),
                             not_after=not_after or NOW + dt.timedelta(days=90), issued_at=issued_at,
                             key_type="ec-p256", der=b"\x30\x00" + bytes(8), renewal_of=renewal_of)


def test_ca_round_trip_and_unique_name(any_repo: Any) -> None:
    any_repo.add_ca(ca_record("root"))
    any_repo.add_ca(ca_record("sub"))
    assert any_repo.get_ca("sub") == ca_record("sub")
    assert [c.name for c in any_repo.list_cas()] == ["root", "sub"]
    with pytest.raises(CaExists):
        any_repo.add_ca(ca_record("root"))
    with pytest.raises(CaNotFound):
        any_repo.get_ca("nope")


def test_profiles_put_replace_list_delete(any_repo: Any) -> None:
    any_repo.add_ca(ca_record())
    profiles = builtin_profiles("root", crl_url="http://x.example/crl")
    for p in profiles:
        any_repo.put_profile(p)
    changed = replace(profiles[0], description="changed")
    any_repo.put_profile(changed)
    assert any_repo.get_profile("root", "tls-server") == changed
    assert [p.name for p in any_repo.list_profiles("root")] == ["tls-client", "tls-mutual", "tls-server"]
    assert any_repo.list_profiles("other") == []
    any_repo.delete_profile("root", "tls-client")
    with pytest.raises(ProfileNotFound):
        any_repo.get_profile("root", "tls-client")
    with pytest.raises(ProfileNotFound):
        any_repo.delete_profile("root", "tls-client")


def test_crl_numbers_increase_and_latest_is_never_rolled_back(any_repo: Any) -> None:
    any_repo.add_ca(ca_record())
    assert [any_repo.next_crl_number("root") for _ in range(3)] == [1, 2, 3]
    assert any_repo.latest_crl("root") is None
    crl3 = CrlRecord("root", 3, NOW, NOW + dt.timedelta(days=1), b"crl3", 7)
    any_repo.save_crl(crl3)
    any_repo.save_crl(replace(crl3, number=2, der=b"crl2"))
    assert any_repo.latest_crl("root") == crl3
    crl4 = replace(crl3, number=4, der=b"crl4")
    any_repo.save_crl(crl4)
    assert any_repo.latest_crl("root") == crl4


def test_certificate_round_trip_and_duplicate_serial(any_repo: Any) -> None:
    big = (1 << 159) - 1
    rec = cert(big, renewal_of=1 << 100)
    any_repo.add(rec)
    assert any_repo.get(big) == rec
    with pytest.raises(DuplicateSerial):
        any_repo.add(replace(rec, ca_name="other", subject="CN=x"))
    with pytest.raises(UnknownSerial):
        any_repo.get(12345)


def test_search_filters_and_order(any_repo: Any) -> None:
    a = cert(1 << 70, subject="CN=Alpha_1%,O=Acme", sans=("DNS:alpha.example.com", "IP:10.0.0.1"),
             issued_at=NOW - dt.timedelta(hours=2))
    b = cert(1 << 71, profile="tls-client", requester="bob", subject="CN=beta", sans=("email:b@example.com",),
             not_after=NOW + dt.timedelta(days=5), issued_at=NOW - dt.timedelta(hours=1))
    c = cert(1 << 72, ca="sub", subject="CN=gamma", sans=(), not_after=NOW - dt.timedelta(days=1))
    for r in (a, b, c):
        any_repo.add(r)
    any_repo.set_revocation(b.serial, Revocation(RevocationReason.KEY_COMPROMISE, NOW, "admin"), expected=None)

    def serials(**kw: Any) -> list[int]:
        return [r.serial for r in any_repo.search(CertificateQuery(as_of=NOW, **kw))]

    assert serials() == [c.serial, b.serial, a.serial]  # newest first
    assert serials(subject_contains="alpha_1%") == [a.serial]  # LIKE wildcards are literal
    assert serials(subject_contains="p_a") == []  # "_" is not a wildcard
    assert serials(san_contains="ALPHA.example") == [a.serial]
    assert serials(san_contains="DNS:alpha") == [a.serial]
    assert serials(san_contains="10.0.0.1") == [a.serial]
    assert serials(profile="tls-client") == [b.serial]
    assert serials(requester="bob") == [b.serial]
    assert serials(ca_name="sub") == [c.serial]
    assert serials(serial=a.serial) == [a.serial]
    assert serials(status=CertStatus.REVOKED) == [b.serial]
    assert serials(status=CertStatus.EXPIRED) == [c.serial]
    assert serials(status=CertStatus.ACTIVE) == [a.serial]
    assert serials(expires_after=NOW, expires_before=NOW + dt.timedelta(days=30)) == [b.serial]
    assert serials(limit=1, offset=1) == [b.serial]


def test_revocation_compare_and_set_and_epoch(any_repo: Any) -> None:
    any_repo.add_ca(ca_record())
    rec = cert()
    any_repo.add(rec)
    assert any_repo.revocation_epoch("root") == 0
    hold = Revocation(RevocationReason.CERTIFICATE_HOLD, NOW, "admin")
    updated = any_repo.set_revocation(rec.serial, hold, expected=None)
    assert updated.revocation == hold and any_repo.get(rec.serial).revocation == hold
    assert any_repo.revocation_epoch("root") == 1
    with pytest.raises(ConcurrentUpdate):
        any_repo.set_revocation(rec.serial, None, expected=None)
    final = Revocation(RevocationReason.KEY_COMPROMISE, NOW, "admin", invalidity_date=NOW - dt.timedelta(days=1))
    assert any_repo.set_revocation(rec.serial, final, expected=hold).revocation == final
    assert any_repo.revocation_epoch("root") == 2
    with pytest.raises(UnknownSerial):
        any_repo.set_revocation(99, None, expected=None)
    expired = cert(not_after=NOW - dt.timedelta(days=1))
    any_repo.add(expired)
    any_repo.set_revocation(expired.serial, final, expected=None)
    assert [r.serial for r in any_repo.list_revoked("root", not_expired_at=NOW)] == [rec.serial]


def test_usage_upsert_and_counters(any_repo: Any) -> None:
    rec = cert()
    any_repo.add(rec)
    u1 = UsageRecord(rec.serial, "root", "alice", "host-a", NOW - dt.timedelta(minutes=5))
    any_repo.add_usage(u1)
    u2 = replace(u1, reported_at=NOW, in_use=False, detail="moved")
    any_repo.add_usage(u2)
    any_repo.add_usage(replace(u1, host="host-b"))
    assert any_repo.list_usage(serial=rec.serial) == [u2, replace(u1, host="host-b")]
    assert any_repo.list_usage(ca_name="sub") == []

    for _ in range(3):
        any_repo.count_signature("root", "ca-root", SignatureKind.CERTIFICATE)
    any_repo.count_signature("root", "ca-root", SignatureKind.CRL, 2)
    any_repo.count_signature("sub", "ca-sub", SignatureKind.OCSP)
    counts = [(c.ca_name, c.kind, c.count) for c in any_repo.signature_counts()]
    assert counts == [("root", SignatureKind.CERTIFICATE, 3), ("root", SignatureKind.CRL, 2),
                      ("sub", SignatureKind.OCSP, 1)]
    assert [c.ca_name for c in any_repo.signature_counts("sub")] == ["sub"]


def test_issuance_counts(any_repo: Any) -> None:
    a = cert(not_after=NOW + dt.timedelta(days=10))
    any_repo.add(a)
    any_repo.add(cert(renewal_of=a.serial, not_after=NOW + dt.timedelta(days=100)))
    r = cert(requester="bob")
    any_repo.add(r)
    any_repo.set_revocation(r.serial, Revocation(RevocationReason.SUPERSEDED, NOW), expected=None)
    got = any_repo.issuance_counts(ca_name="root", now=NOW, expiring_within=dt.timedelta(days=30))
    assert [(c.requester, c.issued, c.renewed, c.revoked, c.expiring) for c in got] == [
        ("alice", 2, 1, 0, 1), ("bob", 1, 0, 1, 0)]


def test_sql_store_concurrent_crl_numbers_and_serials(make_services: Any, backend: str) -> None:
    from sms.ca.wiring import ca_store

    store = ca_store(make_services(backend))
    store.add_ca(ca_record())
    numbers: list[int] = []
    errors: list[BaseException] = []
    rec = cert()
    store.add(rec)
    dup: list[int] = []

    def work() -> None:
        try:
            for _ in range(5):
                numbers.append(store.next_crl_number("root"))
            try:
                store.add(replace(rec, subject="CN=dup"))
            except DuplicateSerial:
                dup.append(1)
            for _ in range(10):
                store.count_signature("root", "ca-root", SignatureKind.CERTIFICATE)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(numbers) == list(range(1, 31))
    assert len(dup) == 6
    assert store.signature_counts()[0].count == 60


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_signature_counts_ride_with_a_certificate_insert_and_survive_a_failed_one(make_services: Any,
                                                                                   backend: str) -> None:
    from sms.ca.store import SqlCaStore

    svc = make_services(backend)
    clock = _Clock()
    store = SqlCaStore(svc.sessions, counter_flush_seconds=10.0, clock=clock)
    reader = SqlCaStore(svc.sessions)  # another process's view: it sees only what was written
    store.add_ca(ca_record())
    taken = cert()
    store.add(taken)
    for _ in range(3):
        store.count_signature("root", "ca-root", SignatureKind.CERTIFICATE)
    assert reader.signature_counts() == []  # not due yet: nothing written
    clock.t += 4
    store.add(cert())
    assert reader.signature_counts() == []  # less than half the interval: still buffered
    clock.t += 2
    store.count_signature("root", "ca-root", SignatureKind.CERTIFICATE)
    with pytest.raises(DuplicateSerial):  # the counts taken for this insert are kept for the next
        store.add(replace(taken, subject="CN=again"))
    assert reader.signature_counts() == []
    store.add(cert())
    assert [(c.kind, c.count) for c in reader.signature_counts()] == [(SignatureKind.CERTIFICATE, 4)]


def test_a_counter_flush_does_not_carry_the_requests_audit_entry(make_services: Any, backend: str) -> None:
    """A request's attached work (its audit entry) commits with the certificate it records, not
    with a signature counter flush that happens to come first."""
    from sms.ca.store import SqlCaStore
    from sms.db import Attached, attach

    svc = make_services(backend)
    store = SqlCaStore(svc.sessions, counter_flush_seconds=0.0)
    store.add_ca(ca_record())
    results: list[Any] = []
    work = Attached(lambda: lambda tx, result: results.append(result), lambda tx: None)
    rec = cert()
    with attach(work):
        store.count_signature("root", "ca-root", SignatureKind.CERTIFICATE)  # due at once: flushed
        assert not work.committed and results == []
        store.add(rec)
    assert work.committed and len(results) == 1
    assert results[0].audit_detail() == {"serial": f"{rec.serial:x}", "profile": "tls-server"}
    assert [c.count for c in store.signature_counts()] == [1]
