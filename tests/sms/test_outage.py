"""A key token that disappears while the service runs: 503 problems, readiness says so, and the
service recovers by itself when the token is back (real SoftHSM token moved away and back)."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsm import KeyType
from hsm.keystore import KeyStore
from sms import db
from sms.app import create_app
from sms.config import Settings
from sms.runtime import AUDIT_MAC_KEY, build_services
from tests.hsm.faults import token_unavailable
from tests.sms.conftest import PG_URL, PgSchema

PROBLEM = "application/problem+json"
VALUES = {"user": "app", "password": "s3cret-before-outage"}


@pytest.fixture
def outage_app(make_token: Any, backend: str, tmp_path: Path) -> Iterator[tuple[Any, Any, str]]:
    """An app on its own token (so the outage touches no other test), with a short back-off."""
    cfg = make_token("outage")
    ks = KeyStore(cfg, backoff=(0.05, 0.2))
    ks.open()
    schema = PgSchema() if backend == "postgres" else None
    settings = Settings(data_dir=str(tmp_path / "data"), plain_http=True,
                        database_url=PG_URL if schema else "", hsm_token_label=cfg.token_label)
    engine = schema.engine() if schema else db.make_engine(settings.effective_database_url)
    svc = build_services(settings, engine=engine, keystore=ks)
    db.migrate(engine)
    ks.generate(AUDIT_MAC_KEY, KeyType.AES_256)
    token, _ = svc.auth.create_token(root=True, display_name="outage-root")
    try:
        yield create_app(services=svc), svc, token
    finally:
        engine.dispose()
        if schema:
            schema.drop()
        ks.close()


def _assert_unavailable(resp: Any) -> None:
    assert resp.status_code == 503, (resp.status_code, resp.get_data(as_text=True))
    assert resp.mimetype == PROBLEM
    assert resp.json["status"] == 503 and resp.json["type"].startswith("https://csm.dev/problems/")
    assert int(resp.headers["Retry-After"]) > 0
    assert "Traceback" not in resp.get_data(as_text=True)


def test_token_outage_gives_503_then_recovers_without_restart(outage_app, softhsm_conf):
    app, svc, token = outage_app
    c, h = app.test_client(), {"X-CSM-Token": token}
    assert c.post("/v1/domains", json={"name": "d"}, headers=h).status_code == 201
    assert c.post("/v1/domains/d/secrets", json={"name": "kept", "values": VALUES}, headers=h).status_code == 201
    assert c.get("/v1/sys/ready").status_code == 200
    audited_before = svc.audit.verify().entries

    with token_unavailable(softhsm_conf, svc.settings.hsm_token_label):
        ready = c.get("/v1/sys/ready")
        assert ready.status_code == 503
        assert ready.json["status"] == "unavailable"
        assert ready.json["token"]["ok"] is False and ready.json["token"]["sealed"] is False
        assert ready.json["database"]["ok"] is True
        assert c.get("/v1/sys/health").status_code == 200  # liveness is not readiness
        _assert_unavailable(c.get("/v1/domains/d/secrets/kept", headers=h))
        _assert_unavailable(c.post("/v1/domains/d/secrets", json={"name": "lost", "values": VALUES}, headers=h))
        _assert_unavailable(c.put("/v1/domains/d/secrets/kept", json={"values": {"x": "y"}}, headers=h))
        # Creating a token needs no key of the token: its entry commits into the audit outbox
        # and is MAC'd once the token is back (as a read's journaled entry is; both are
        # refused once folding has failed for 30 s).
        created = c.post("/v1/auth/tokens", json={"policies": []}, headers=h)
        assert created.status_code == 201

    deadline = time.monotonic() + 10
    while (ready := c.get("/v1/sys/ready")).status_code != 200:
        assert time.monotonic() < deadline, ready.json
        time.sleep(0.05)
    assert ready.json["token"]["ok"] is True

    r = c.get("/v1/domains/d/secrets/kept", headers=h)
    assert r.status_code == 200 and r.json["values"] == VALUES and r.json["version"] == 1
    assert c.get("/v1/domains/d/secrets/lost", headers=h).status_code == 404  # refused writes left nothing
    assert c.post("/v1/domains/d/secrets", json={"name": "after", "values": VALUES}, headers=h).status_code == 201
    assert c.post("/v1/auth/tokens", json={"policies": []}, headers=h).status_code in (200, 201)
    report = svc.audit.verify()
    assert report.ok, report.problem
    assert report.entries >= audited_before + 4
    made = [e for e in svc.audit.entries(limit=100000) if e["action"] == "token.create" and e["status"] == 201]
    assert len(made) == 2  # the one during the outage and the one after


def test_worker_whose_token_is_missing_at_first_use_serves_once_it_appears(make_token, softhsm_conf, tmp_path):
    """The production path: the key store opens lazily in the worker; a token that is not there
    yet gives 503s (not a crash, not a stuck worker), and the first call after it is back logs in."""
    cfg = make_token("late")
    settings = Settings(data_dir=str(tmp_path / "data"), plain_http=True, hsm_token_label=cfg.token_label)
    with KeyStore(cfg) as ks:
        ks.generate(AUDIT_MAC_KEY, KeyType.AES_256)
    svc = build_services(settings, token_config=cfg)  # lazy: nothing opened yet
    db.migrate(svc.engine)
    token, _ = svc.auth.create_token(root=True, display_name="late-root")
    c, h = create_app(services=svc).test_client(), {"X-CSM-Token": token}
    try:
        with token_unavailable(softhsm_conf, cfg.token_label):
            for _ in range(2):  # every attempt re-tries the login, none sticks
                ready = c.get("/v1/sys/ready")
                assert ready.status_code == 503
                assert ready.json["token"]["ok"] is False and ready.json["sealed"] is False
                _assert_unavailable(c.post("/v1/domains", json={"name": "d"}, headers=h))
        assert c.get("/v1/sys/ready").status_code == 200
        assert c.post("/v1/domains", json={"name": "d"}, headers=h).status_code == 201
        assert svc.audit.verify().ok
    finally:
        svc.keystore.close()
        svc.engine.dispose()
