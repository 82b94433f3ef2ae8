"""Inventory search and usage reports: filters by subject, SAN, serial, profile, requester,
status and expiry window; per CA/profile/requester counters; per-key signature counts; clients'
usage statements about their own certificates."""
from __future__ import annotations

import datetime as dt

import pytest

from ca import (
    CaEngine,
    CertificateQuery,
    CertStatus,
    CrlPublisher,
    InvalidRequest,
    IssueRequest,
    NotCertificateOwner,
    OcspResponder,
    RevocationReason,
    RevokeRequest,
    SignatureKind,
    UnknownSerial,
    UsageUpdate,
)

from .conftest import Clock, make_csr, name


@pytest.fixture
def population(engine: CaEngine, root, sub):  # type: ignore[no-untyped-def]
    def issue(ca: str, profile: str, cn: str, requester: str, days: int, dns: tuple[str, ...] = (),
              renewal_of: int | None = None) -> int:
        return engine.issue(IssueRequest(ca=ca, profile=profile, csr=make_csr(name(cn), dns=dns),
                                         requester=requester, validity=dt.timedelta(days=days),
                                         renewal_of=renewal_of)).record.serial

    s = {
        "web": issue("sub", "tls-server", "web.example.com", "alice", 90, ("www.example.com",)),
        "api": issue("sub", "tls-server", "api.example.com", "alice", 10),
        "client": issue("sub", "tls-client", "batch-job", "bob", 20),
        "mutual": issue("root", "tls-mutual", "onap-aai", "cmp-ra", 300, ("aai.onap.svc",)),
    }
    s["api2"] = issue("sub", "tls-server", "api.example.com", "alice", 60, renewal_of=s["api"])
    engine.revoke(RevokeRequest(serial=s["client"], reason=RevocationReason.KEY_COMPROMISE))
    return s


def _serials(records) -> set[int]:  # type: ignore[no-untyped-def]
    return {r.serial for r in records}


def test_inventory_search_filters_combine(engine: CaEngine, population: dict[str, int]) -> None:
    p = population
    assert _serials(engine.search(CertificateQuery(subject_contains="API.example"))) == {p["api"], p["api2"]}
    assert _serials(engine.search(CertificateQuery(san_contains="www.example.com"))) == {p["web"]}
    assert _serials(engine.search(CertificateQuery(san_contains="DNS:aai.onap"))) == {p["mutual"]}
    assert _serials(engine.search(CertificateQuery(serial=p["client"]))) == {p["client"]}
    assert _serials(engine.search(CertificateQuery(profile="tls-mutual"))) == {p["mutual"]}
    assert _serials(engine.search(CertificateQuery(requester="alice", ca_name="sub"))) == {p["web"], p["api"], p["api2"]}
    assert _serials(engine.search(CertificateQuery(status=CertStatus.REVOKED))) == {p["client"]}
    now = engine.now()
    expiring = engine.search(CertificateQuery(expires_after=now, expires_before=now + dt.timedelta(days=30),
                                              status=CertStatus.ACTIVE))
    assert _serials(expiring) == {p["api"]}
    page = engine.search(CertificateQuery(ca_name="sub", requester="alice", limit=2))
    rest = engine.search(CertificateQuery(ca_name="sub", requester="alice", limit=2, offset=2))
    assert len(page) == 2 and len(rest) == 1 and not _serials(page) & _serials(rest)
    with pytest.raises(ValueError):
        CertificateQuery(limit=0)


def test_expired_status_follows_the_clock(engine: CaEngine, population: dict[str, int], clock: Clock) -> None:
    clock.advance(dt.timedelta(days=15))
    expired = engine.search(CertificateQuery(status=CertStatus.EXPIRED))
    assert _serials(expired) == {population["api"]}  # the revoked 20-day one stays "revoked"


def test_usage_report_counts_issued_renewed_revoked_expiring_and_signatures(
        engine: CaEngine, population: dict[str, int], sub, root) -> None:
    CrlPublisher(engine).current("sub")
    OcspResponder(engine, "sub").respond(b"junk")  # malformed: answered unsigned, not counted
    report = engine.usage_report(expiring_within=dt.timedelta(days=30))
    rows = {(r.ca_name, r.profile, r.requester): r for r in report.issuance}
    alice = rows[("sub", "tls-server", "alice")]
    assert (alice.issued, alice.renewed, alice.revoked, alice.expiring) == (3, 1, 0, 1)
    bob = rows[("sub", "tls-client", "bob")]
    assert (bob.issued, bob.revoked, bob.expiring) == (1, 1, 0)
    assert rows[("root", "_sub-ca", "")].issued == 1
    sigs = {(s.ca_name, s.key_label, s.kind): s.count for s in report.signatures}
    assert sigs[("sub", sub.key_label, SignatureKind.CERTIFICATE)] == 4
    assert sigs[("sub", sub.key_label, SignatureKind.CRL)] == 1
    assert ("sub", sub.key_label, SignatureKind.OCSP) not in sigs
    # root: its self-signature, the sub-CA and one leaf
    assert sigs[("root", root.key_label, SignatureKind.CERTIFICATE)] == 3
    only_sub = engine.usage_report(ca_name="sub")
    assert {r.ca_name for r in only_sub.issuance} == {"sub"} and {s.ca_name for s in only_sub.signatures} == {"sub"}


def test_clients_post_usage_for_their_own_certificates_and_it_shows_in_the_report(
        engine: CaEngine, population: dict[str, int]) -> None:
    web = population["web"]
    engine.record_usage(UsageUpdate(serial=web, reported_by="alice", host="web-1.internal", detail="nginx :443"))
    engine.record_usage(UsageUpdate(serial=web, reported_by="alice", host="web-2.internal"))
    engine.record_usage(UsageUpdate(serial=web, reported_by="alice", host="web-2.internal", in_use=False))
    with pytest.raises(NotCertificateOwner):
        engine.record_usage(UsageUpdate(serial=web, reported_by="bob", host="evil"))
    engine.record_usage(UsageUpdate(serial=web, reported_by="auditor", host="scan-1"), admin=True)
    with pytest.raises(UnknownSerial):
        engine.record_usage(UsageUpdate(serial=1, reported_by="alice", host="x"))
    with pytest.raises(InvalidRequest):
        engine.record_usage(UsageUpdate(serial=web, reported_by="alice", host=" "))
    usage = {(u.host, u.in_use) for u in engine.usage_report(ca_name="sub").usage}
    assert usage == {("web-1.internal", True), ("web-2.internal", False), ("scan-1", True)}
    assert engine.usage_report(ca_name="root").usage == ()
