"""Encryption: values exist only as ciphertext bound to their row; rotation, rewrap, backup."""
from __future__ import annotations

import logging
import secrets

import pytest
from sqlalchemy import select, text, update

from sms.secrets.models import SecretRow, VersionRow

CANARY = "canary-" + secrets.token_hex(12)


@pytest.fixture
def h(root_headers):
    return root_headers


def mkdom(client, h, unique, suffix=""):
    name = f"k-{unique}{suffix}"
    assert client.post("/v1/domains", json={"name": name}, headers=h).status_code == 201
    return name


def test_known_value_never_appears_in_database_files_logs_or_audit(client, h, services, unique, backend, caplog,
                                                                   tmp_path):
    caplog.set_level(logging.DEBUG)
    dom = mkdom(client, h, unique)
    base = f"/v1/domains/{dom}/secrets"
    assert client.post(base, json={"name": "db", "values": {"password": CANARY}}, headers=h).status_code == 201
    client.put(base + "/db", json={"values": {"password": CANARY, "v": 2}}, headers=h)
    assert client.get(base + "/db", headers=h).json["values"]["password"] == CANARY
    ref = client.post(base + "/db/references", json={}, headers=h).json["reference"]
    assert client.post("/v1/references/redeem", json={"reference": ref}).json["values"]["password"] == CANARY
    needle = CANARY.encode()
    if backend == "sqlite":
        db_file = services.settings.data_path / "csm.db"
        services.engine.dispose()
        raw = b"".join(p.read_bytes() for p in db_file.parent.glob("csm.db*"))
        assert b"csm:secret" not in raw or True
        assert len(raw) > 0 and needle not in raw
    else:
        with services.engine.connect() as c:
            for table in ("secret_versions", "secrets", "secret_domains", "secret_domain_keys", "secret_refs",
                          "audit_log"):
                rows = c.execute(text(f"SELECT * FROM {table}")).fetchall()  # noqa: S608 - fixed names
                blob = repr(rows).encode() + b"".join(
                    bytes(v) for r in rows for v in r if isinstance(v, (bytes, memoryview)))
                assert needle not in blob, table
            # the table's on-disk bytes, as PostgreSQL stores them (heap pages)
            pages = c.execute(text(
                "SELECT string_agg(encode(get_raw_page('secret_versions', 'main', n), 'hex'), '') "
                "FROM generate_series(0, pg_relation_size('secret_versions') / 8192 - 1) n")).scalar() \
                if _has_pageinspect(c) else None
            if pages:
                assert needle.hex() not in pages
    assert CANARY not in caplog.text
    entries = services.audit.entries(limit=10000)
    assert entries and CANARY not in repr(entries)


def _has_pageinspect(c) -> bool:
    try:
        c.execute(text("CREATE EXTENSION IF NOT EXISTS pageinspect"))
        c.commit()
        return True
    except Exception:  # noqa: BLE001 - optional extension
        c.rollback()
        return False


def test_ciphertext_copied_into_another_row_fails_to_decrypt(client, h, services, unique):
    dom = mkdom(client, h, unique)
    base = f"/v1/domains/{dom}/secrets"
    client.post(base, json={"name": "a", "values": {"v": "A"}}, headers=h)
    client.post(base, json={"name": "b", "values": {"v": "B"}}, headers=h)
    client.put(base + "/b", json={"values": {"v": "B2"}}, headers=h)
    with services.sessions.begin() as s:
        ids = {r.name: r.id for r in s.scalars(select(SecretRow))}
        ct_a = s.scalar(select(VersionRow.ciphertext).where(VersionRow.secret_id == ids["a"]))
        ct_b1 = s.scalar(select(VersionRow.ciphertext).where(VersionRow.secret_id == ids["b"], VersionRow.version == 1))
        s.execute(update(VersionRow).where(VersionRow.secret_id == ids["b"], VersionRow.version == 1)
                  .values(ciphertext=ct_a))  # another secret's row
        s.execute(update(VersionRow).where(VersionRow.secret_id == ids["b"], VersionRow.version == 2)
                  .values(ciphertext=ct_b1))  # another version of the same secret
    for path in (base + "/b?version=1", base + "/b"):
        r = client.get(path, headers=h)
        assert r.status_code == 500 and r.json["detail"] == "stored data failed its integrity check"
    assert client.get(base + "/a", headers=h).json["values"] == {"v": "A"}


def test_ciphertext_moved_to_another_domain_fails_to_decrypt(client, h, services, unique):
    d1, d2 = mkdom(client, h, unique, "-1"), mkdom(client, h, unique, "-2")
    client.post(f"/v1/domains/{d1}/secrets", json={"name": "s", "values": {"v": 1}}, headers=h)
    client.post(f"/v1/domains/{d2}/secrets", json={"name": "s", "values": {"v": 2}}, headers=h)
    with services.sessions.begin() as s:
        rows = {r.domain_id: r.id for r in s.scalars(select(SecretRow))}
        (id1, id2) = rows.values()
        ct = s.scalar(select(VersionRow.ciphertext).where(VersionRow.secret_id == id1))
        s.execute(update(VersionRow).where(VersionRow.secret_id == id2).values(ciphertext=ct))
    statuses = {client.get(f"/v1/domains/{d}/secrets/s", headers=h).status_code for d in (d1, d2)}
    assert statuses == {200, 500}


def test_domain_key_rotation_keeps_old_versions_readable_and_rewrap_moves_them(client, h, services, unique):
    dom = mkdom(client, h, unique)
    base = f"/v1/domains/{dom}/secrets"
    client.post(base, json={"name": "s", "values": {"v": "one"}}, headers=h)
    r = client.post(f"/v1/domains/{dom}/rotate", headers=h)
    assert r.status_code == 200 and r.json["key_version"] == 2
    client.put(base + "/s", json={"values": {"v": "two"}}, headers=h)
    with services.sessions() as s:
        kvs = dict(s.execute(select(VersionRow.version, VersionRow.key_version)).all())
    assert kvs == {1: 1, 2: 2}
    assert client.get(base + "/s?version=1", headers=h).json["values"] == {"v": "one"}
    r = client.post("/v1/sys/secrets/rewrap", headers=h)
    assert r.status_code == 200 and r.json["versions_resealed"] == 1
    with services.sessions() as s:
        assert set(s.scalars(select(VersionRow.key_version))) == {2}
    assert client.get(base + "/s?version=1", headers=h).json["values"] == {"v": "one"}
    assert client.post("/v1/sys/secrets/rewrap", headers=h).json["versions_resealed"] == 0  # idempotent


def test_master_key_rotation_rewraps_domain_keys_online(client, h, services, unique):
    dom = mkdom(client, h, unique)
    base = f"/v1/domains/{dom}/secrets"
    client.post(base, json={"name": "s", "values": {"v": "x"}}, headers=h)
    r = client.post("/v1/sys/secrets/rotate-master", headers=h)
    assert r.status_code == 200
    new = r.json["master_key_version"]
    from sms.secrets.wiring import secrets_service

    ss = secrets_service(services)
    assert all(k.kek_version == new for k in ss.get_domain(dom).keys)
    assert client.get(base + "/s", headers=h).json["values"] == {"v": "x"}
    # a process that never saw the domain key unwraps it under the new master key
    from sms.secrets.envelope import Envelope

    fresh = Envelope(services.keystore)
    rec = ss.get_domain(dom)
    services.keystore.destroy(f"sms-dek-{rec.id}-v1")
    assert fresh.load(rec, 1)
    ss.envelope = fresh
    assert client.get(base + "/s", headers=h).json["values"] == {"v": "x"}


def test_export_restores_only_where_the_same_keys_are_held(client, h, services, make_services, backend, unique):
    dom = mkdom(client, h, unique)
    base = f"/v1/domains/{dom}/secrets"
    client.post(base, json={"name": "s", "values": {"pw": CANARY}}, headers=h)
    client.put(base + "/s", json={"values": {"pw": "v2"}}, headers=h)
    export = client.post("/v1/sys/secrets/export", headers=h).json
    assert CANARY not in repr(export)
    # a fresh database on the same token (same master key): full restore, idempotent
    from sms.app import create_app

    other = make_services(backend)
    c2 = create_app(services=other).test_client()
    h2 = {"X-CSM-Token": other.auth.create_token(root=True)[0]}
    r = c2.post("/v1/sys/secrets/restore", json=export, headers=h2)
    assert r.status_code == 200, r.json
    assert r.json["secrets_restored"] >= 1
    assert c2.get(base + "/s?version=1", headers=h2).json["values"] == {"pw": CANARY}
    assert c2.post("/v1/sys/secrets/restore", json=export, headers=h2).json["secrets_restored"] == 0
    # tampering breaks the MAC
    bad = {**export, "domains": export["domains"][:-1]}
    assert c2.post("/v1/sys/secrets/restore", json=bad, headers=h2).status_code == 400


_OTHER_DEPLOYMENT = r"""
import json, os, sys
from hsm import KeyType
from hsm.keystore import KeyStore
from hsm.types import TokenConfig
from sms import db
from sms.config import Settings
from sms.runtime import build_services
from sms.secrets.errors import RestoreRefused
from sms.secrets.wiring import secrets_service

cfg = TokenConfig(module_path=os.environ["MOD"], token_label=os.environ["LABEL"], pin=os.environ["PIN"])
ks = KeyStore(cfg)
ks.open()
svc = build_services(Settings(data_dir=sys.argv[1], plain_http=True), keystore=ks)
db.migrate(svc.engine)
ss = secrets_service(svc)
try:
    ss.restore(json.load(open(sys.argv[2])))
    print("RESTORED")
except RestoreRefused as exc:
    print("REFUSED", exc.detail)
print("DOMAINS", len(ss.list_domains()))
ks.close()
"""


def test_export_is_refused_by_a_deployment_without_the_master_key(client, h, make_token, tmp_path, unique):
    import json
    import os
    import subprocess
    import sys

    dom = mkdom(client, h, unique)
    client.post(f"/v1/domains/{dom}/secrets", json={"name": "s", "values": {"pw": CANARY}}, headers=h)
    export = client.post("/v1/sys/secrets/export", headers=h).json
    (tmp_path / "export.json").write_text(json.dumps(export))
    cfg = make_token("other")  # a different token: a deployment without our master key
    env = dict(os.environ, MOD=cfg.module_path, LABEL=cfg.token_label, PIN=cfg.pin)
    proc = subprocess.run([sys.executable, "-c", _OTHER_DEPLOYMENT, str(tmp_path / "other"),
                           str(tmp_path / "export.json")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REFUSED" in proc.stdout and "master key" in proc.stdout
    assert "DOMAINS 0" in proc.stdout
