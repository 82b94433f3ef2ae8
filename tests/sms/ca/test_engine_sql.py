"""The engine over the service's SQL store (SQLite and PostgreSQL) and the real token: the CA
lifecycle survives a new engine (a restarted process) and the wiring builds one engine per
Services."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ca import CreateIntermediateRequest, CreateRootRequest, IssueRequest, RevocationReason, RevokeRequest
from ca.engine import CaEngine
from sms.ca.store import SqlCaStore
from sms.ca.wiring import ca_engine, ca_store, crl_publisher
from tests.ca.conftest import install, make_csr, name, openssl_verify


def test_wiring_builds_one_engine_per_services(services: Any) -> None:
    assert ca_engine(services) is ca_engine(services)
    assert services.extras["ca"] is ca_engine(services)


def test_lifecycle_over_sql_survives_a_new_engine(services: Any, unique: str, tmp_path: Path) -> None:
    engine = ca_engine(services)
    root = f"root-{unique}"
    engine.create_root(CreateRootRequest(name=root, subject=f"CN=Root {unique}"))
    engine.create_intermediate(CreateIntermediateRequest(name=f"sub-{unique}", parent=root,
                                                         subject=f"CN=Sub {unique}"))
    install(engine, f"sub-{unique}")
    issued = engine.issue(IssueRequest(ca=f"sub-{unique}", profile="tls-server", requester="t",
                                       csr=make_csr(name("svc.example.com"), dns=["svc.example.com"])))
    assert openssl_verify(tmp_path, issued.certificate, issued.chain).returncode == 0
    engine.revoke(RevokeRequest(serial=issued.record.serial, reason=RevocationReason.KEY_COMPROMISE))
    crl = crl_publisher(services).current(f"sub-{unique}")
    assert crl.number == 1

    ca_store(services).close()  # flushes the buffered signature counters, as at process exit
    # a second process: a fresh store and engine over the same database and token
    fresh = CaEngine(keys=services.keystore, cas=SqlCaStore(services.sessions),
                     certificates=SqlCaStore(services.sessions))
    again = fresh.get_certificate(issued.record.serial)
    assert again.revocation is not None and again.revocation.reason is RevocationReason.KEY_COMPROMISE
    assert fresh.generate_crl(f"sub-{unique}").number == 2
    report = fresh.usage_report(ca_name=f"sub-{unique}")
    assert report.issuance[0].issued == 1 and report.issuance[0].revoked == 1
    kinds = {c.kind.value: c.count for c in report.signatures}
    assert kinds["certificate"] == 1 and kinds["crl"] == 2
