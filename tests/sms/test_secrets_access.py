"""Policies per domain and per secret path; one-time references."""
from __future__ import annotations

import time

import pytest


@pytest.fixture
def h(root_headers):
    return root_headers


def token(client, h, name, rules):
    assert client.put(f"/v1/sys/policies/{name}", json={"rules": rules}, headers=h).status_code == 200
    return {"X-CSM-Token": client.post("/v1/auth/tokens", json={"policies": [name]}, headers=h).json["token"]}


@pytest.fixture
def two_domains(client, h, unique):
    a, b = f"team-a-{unique}", f"team-b-{unique}"
    for d in (a, b):
        client.post("/v1/domains", json={"name": d}, headers=h)
        client.post(f"/v1/domains/{d}/secrets", json={"name": "db", "values": {"pw": d}}, headers=h)
        client.post(f"/v1/domains/{d}/secrets", json={"name": "api", "values": {"key": d}}, headers=h)
    return a, b


def test_policies_apply_per_domain(client, h, two_domains):
    a, b = two_domains
    t = token(client, h, "team-a", [{"path": f"secrets/{a}/*", "capabilities": ["read", "list"]}])
    assert client.get(f"/v1/domains/{a}/secrets/db", headers=t).status_code == 200
    assert client.get(f"/v1/domains/{a}/secrets", headers=t).status_code == 200
    assert client.get(f"/v1/domains/{b}/secrets/db", headers=t).status_code == 403
    assert client.get(f"/v1/domains/{b}/secrets", headers=t).status_code == 403
    assert client.put(f"/v1/domains/{a}/secrets/db", json={"values": {"pw": "x"}}, headers=t).status_code == 403
    assert client.get("/v1/domains", headers=t).status_code == 403


def test_policies_apply_per_secret_and_capability(client, h, two_domains):
    a, _b = two_domains
    t = token(client, h, "db-writer", [
        {"path": f"secrets/{a}/db", "capabilities": ["read", "update"]},
        {"path": f"secrets/{a}/new-*", "capabilities": ["create"]},
        {"path": f"secrets/{a}/api", "capabilities": ["deny"]},
    ])
    base = f"/v1/domains/{a}/secrets"
    assert client.put(base + "/db", json={"values": {"pw": "y"}}, headers=t).status_code == 200
    assert client.get(base + "/db", headers=t).json["values"] == {"pw": "y"}
    assert client.delete(base + "/db", headers=t).status_code == 403
    assert client.get(base + "/api", headers=t).status_code == 403
    assert client.post(base, json={"name": "new-1", "values": {"k": 1}}, headers=t).status_code == 201
    assert client.post(base, json={"name": "other", "values": {"k": 1}}, headers=t).status_code == 403
    assert client.get(base, headers=t).status_code == 403  # no list on the domain
    assert client.get(base + "/db", headers={}).status_code == 401


def test_denied_requests_are_audited_without_values(client, h, two_domains, services):
    a, _ = two_domains
    t = token(client, h, "nothing", [{"path": "sys/none", "capabilities": ["read"]}])
    client.get(f"/v1/domains/{a}/secrets/db", headers=t)
    e = [x for x in services.audit.entries(limit=10000) if x["action"] == "secrets.read"][-1]
    assert e["outcome"] == "denied" and e["resource"] == f"secrets/{a}/db"


def test_one_time_reference_works_exactly_once(client, h, two_domains):
    a, _ = two_domains
    t = token(client, h, "reader", [{"path": f"secrets/{a}/db", "capabilities": ["read"]}])
    r = client.post(f"/v1/domains/{a}/secrets/db/references", json={"ttl": 30}, headers=t)
    assert r.status_code == 201 and r.json["reference"].startswith("csmref.") and r.json["ttl"] == 30
    ref = r.json["reference"]
    got = client.post("/v1/references/redeem", json={"reference": ref})  # no token needed
    assert got.status_code == 200 and got.json["values"] == {"pw": a} and got.json["version"] == 1
    again = client.post("/v1/references/redeem", json={"reference": ref})
    assert again.status_code == 404 and again.mimetype == "application/problem+json"


def test_reference_needs_read_permission_and_expires(client, h, two_domains, services):
    a, b = two_domains
    t = token(client, h, "reader-a", [{"path": f"secrets/{a}/*", "capabilities": ["read"]}])
    assert client.post(f"/v1/domains/{b}/secrets/db/references", json={}, headers=t).status_code == 403
    assert client.post(f"/v1/domains/{a}/secrets/db/references", json={"ttl": 99999}, headers=t).status_code == 400
    ref = client.post(f"/v1/domains/{a}/secrets/db/references", json={"ttl": 1}, headers=t).json["reference"]
    time.sleep(1.2)
    assert client.post("/v1/references/redeem", json={"reference": ref}).status_code == 404
    assert client.post("/v1/references/redeem", json={"reference": "csmref.guess"}).status_code == 404


def test_reference_pins_the_version_it_was_minted_for(client, h, two_domains):
    a, _ = two_domains
    ref = client.post(f"/v1/domains/{a}/secrets/db/references", json={}, headers=h).json["reference"]
    client.put(f"/v1/domains/{a}/secrets/db", json={"values": {"pw": "rotated"}}, headers=h)
    got = client.post("/v1/references/redeem", json={"reference": ref}).json
    assert got["version"] == 1 and got["values"] == {"pw": a}


def test_concurrent_redeems_succeed_once(client, h, two_domains, app):
    import threading

    a, _ = two_domains
    ref = client.post(f"/v1/domains/{a}/secrets/db/references", json={}, headers=h).json["reference"]
    codes: list[int] = []

    def redeem() -> None:
        codes.append(app.test_client().post("/v1/references/redeem", json={"reference": ref}).status_code)

    threads = [threading.Thread(target=redeem) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert sorted(codes) == [200] + [404] * 5
