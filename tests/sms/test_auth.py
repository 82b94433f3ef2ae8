"""Tokens and policies over REST, on SQLite and PostgreSQL: deny by default, TTLs, revocation."""
from __future__ import annotations

import json

import pytest

from sms.auth.service import hash_token
from sms.auth.models import TokenRow

READER_RULES = [{"path": "secrets/app/*", "capabilities": ["read", "list"]}]


def test_request_without_token_is_unauthenticated_problem(client):
    r = client.get("/v1/sys/policies")
    assert r.status_code == 401
    assert r.mimetype == "application/problem+json"
    assert r.json["type"].endswith("/unauthenticated")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_token_is_refused(client):
    r = client.get("/v1/sys/policies", headers={"X-CSM-Token": "csm.not-a-real-token"})
    assert r.status_code == 401


def test_token_without_policies_is_denied_everything(client, root_headers):
    t = client.post("/v1/auth/tokens", json={"policies": []}, headers=root_headers).json["token"]
    h = {"X-CSM-Token": t}
    for method, path in [("get", "/v1/sys/policies"), ("get", "/v1/auth/tokens"), ("get", "/v1/sys/audit"),
                         ("put", "/v1/sys/policies/x")]:
        r = getattr(client, method)(path, headers=h, json={"rules": READER_RULES} if method == "put" else None)
        assert r.status_code == 403, (method, path, r.json)
        assert r.json["type"].endswith("/permission-denied")
    # ...but it may look itself up
    assert client.get("/v1/auth/tokens/self", headers=h).status_code == 200


def test_policy_grants_exactly_its_paths(client, root_headers):
    assert client.put("/v1/sys/policies/pol-admin", json={"rules": [
        {"path": "sys/policies", "capabilities": ["list"]},
        {"path": "sys/policies/+", "capabilities": ["read"]},
        {"path": "sys/policies/secret-*", "capabilities": ["deny"]},
    ]}, headers=root_headers).status_code == 200
    client.put("/v1/sys/policies/secret-x", json={"rules": READER_RULES}, headers=root_headers)
    t = client.post("/v1/auth/tokens", json={"policies": ["pol-admin"]}, headers=root_headers).json["token"]
    h = {"X-CSM-Token": t}
    assert client.get("/v1/sys/policies", headers=h).status_code == 200
    assert client.get("/v1/sys/policies/pol-admin", headers=h).status_code == 200
    assert client.get("/v1/sys/policies/secret-x", headers=h).status_code == 403  # explicit deny wins
    assert client.delete("/v1/sys/policies/pol-admin", headers=h).status_code == 403  # no delete capability
    assert client.get("/v1/auth/tokens", headers=h).status_code == 403


def test_token_is_stored_only_as_hash(client, root_headers, services):
    body = client.post("/v1/auth/tokens", json={"display_name": "svc"}, headers=root_headers).json
    token = body["token"]
    assert token.startswith("csm.") and len(token) >= 4 + 43  # 256 random bits
    with services.sessions() as s:
        row = s.get(TokenRow, body["accessor"])
        values = [str(getattr(row, c.name)) for c in TokenRow.__table__.columns]
    assert token not in " ".join(values)
    assert row.token_hash == hash_token(token)


def test_token_lookup_renew_revoke_cycle(client, root_headers):
    created = client.post("/v1/auth/tokens", json={"ttl": 60, "max_ttl": 120}, headers=root_headers).json
    acc, h = created["accessor"], {"X-CSM-Token": created["token"]}
    info = client.get(f"/v1/auth/tokens/{acc}", headers=root_headers).json
    assert info["ttl"] == 60 and "token" not in info
    renewed = client.post(f"/v1/auth/tokens/{acc}/renew", json={"increment": 100000}, headers=root_headers).json
    assert renewed["expires_at"] == created["max_expires_at"]  # capped at max TTL
    assert client.delete(f"/v1/auth/tokens/{acc}", headers=root_headers).status_code == 204
    r = client.get("/v1/auth/tokens/self", headers=h)
    assert r.status_code == 401
    assert client.post(f"/v1/auth/tokens/{acc}/renew", json={}, headers=root_headers).status_code == 409


def test_expired_token_is_refused(client, root_headers, services):
    created = client.post("/v1/auth/tokens", json={"ttl": 60}, headers=root_headers).json
    with services.sessions.begin() as s:
        s.get(TokenRow, created["accessor"]).expires_at = 1
    assert client.get("/v1/auth/tokens/self", headers={"X-CSM-Token": created["token"]}).status_code == 401


def test_revoking_a_parent_revokes_its_children(client, root_headers):
    client.put("/v1/sys/policies/minter", json={"rules": [{"path": "sys/tokens", "capabilities": ["create"]}]},
               headers=root_headers)
    parent = client.post("/v1/auth/tokens", json={"policies": ["minter"]}, headers=root_headers).json
    child = client.post("/v1/auth/tokens", json={"policies": ["minter"]},
                        headers={"X-CSM-Token": parent["token"]}).json
    assert "token" in child
    client.delete(f"/v1/auth/tokens/{parent['accessor']}", headers=root_headers)
    assert client.get("/v1/auth/tokens/self", headers={"X-CSM-Token": child["token"]}).status_code == 401


def test_caller_cannot_grant_policies_it_does_not_hold(client, root_headers):
    client.put("/v1/sys/policies/minter", json={"rules": [{"path": "sys/tokens", "capabilities": ["create"]}]},
               headers=root_headers)
    client.put("/v1/sys/policies/powerful", json={"rules": [{"path": "*", "capabilities": ["read"]}]},
               headers=root_headers)
    parent = client.post("/v1/auth/tokens", json={"policies": ["minter"]}, headers=root_headers).json
    r = client.post("/v1/auth/tokens", json={"policies": ["powerful"]}, headers={"X-CSM-Token": parent["token"]})
    assert r.status_code == 403


@pytest.mark.parametrize("rules, fragment", [
    ([], "rules"),
    ([{"path": "/abs", "capabilities": ["read"]}], "path"),
    ([{"path": "a/*/b", "capabilities": ["read"]}], "segment"),
    ([{"path": "a", "capabilities": ["fly"]}], "capabilities"),
    ([{"path": "a", "capabilities": []}], "capabilities"),
])
def test_invalid_policy_is_a_clear_problem(client, root_headers, rules, fragment):
    r = client.put("/v1/sys/policies/bad", json={"rules": rules}, headers=root_headers)
    assert r.status_code in (400, 422)
    assert r.mimetype == "application/problem+json"
    assert fragment in json.dumps(r.json)
    assert client.get("/v1/sys/policies/bad", headers=root_headers).status_code == 404


def test_root_policy_cannot_be_written_or_granted(client, root_headers):
    assert client.put("/v1/sys/policies/root", json={"rules": READER_RULES}, headers=root_headers).status_code == 400
    assert client.post("/v1/auth/tokens", json={"policies": ["root"]}, headers=root_headers).status_code == 400


def test_unknown_policy_cannot_be_attached(client, root_headers):
    r = client.post("/v1/auth/tokens", json={"policies": ["nope"]}, headers=root_headers)
    assert r.status_code == 400 and "nope" in r.json["detail"]


def test_deleted_policy_stops_granting_at_once(client, root_headers):
    client.put("/v1/sys/policies/lister", json={"rules": [{"path": "sys/policies", "capabilities": ["list"]}]},
               headers=root_headers)
    t = client.post("/v1/auth/tokens", json={"policies": ["lister"]}, headers=root_headers).json["token"]
    assert client.get("/v1/sys/policies", headers={"X-CSM-Token": t}).status_code == 200
    client.delete("/v1/sys/policies/lister", headers=root_headers)
    assert client.get("/v1/sys/policies", headers={"X-CSM-Token": t}).status_code == 403


# ---- the per-process identity cache ------------------------------------------------------------
def _auth(services, **kw):
    from sms.auth.service import AuthService

    return AuthService(services.sessions, default_ttl=60, max_ttl=3600, **kw)


def test_revoke_applies_at_once_on_the_instance_that_revoked(client, root_headers, services):
    assert services.auth.cache.ttl > 0  # the default configuration caches identities
    created = client.post("/v1/auth/tokens", json={}, headers=root_headers).json
    h = {"X-CSM-Token": created["token"]}
    assert client.get("/v1/auth/tokens/self", headers=h).status_code == 200  # now cached
    assert client.delete(f"/v1/auth/tokens/{created['accessor']}", headers=root_headers).status_code == 204
    assert client.get("/v1/auth/tokens/self", headers=h).status_code == 401


def test_a_revoke_on_another_instance_applies_within_the_cache_ttl(services):
    from sms.errors import Unauthenticated

    now = [1000.0]
    a = _auth(services, cache_ttl=2, monotonic=lambda: now[0])
    b = _auth(services, cache_ttl=2)
    token, info = b.create_token(display_name="other-instance")
    assert a.authenticate(token).name == info.accessor
    b.revoke(info.accessor)
    assert a.authenticate(token).name == info.accessor  # A has not looked again yet
    now[0] += 2.0
    with pytest.raises(Unauthenticated):
        a.authenticate(token)


def test_a_cached_token_still_expires_on_time(services):
    from sms.errors import Unauthenticated

    wall = [2_000_000_000.0]
    a = _auth(services, cache_ttl=3600, clock=lambda: wall[0])
    token, _info = a.create_token(ttl=10)
    a.authenticate(token)
    wall[0] += 11
    with pytest.raises(Unauthenticated):
        a.authenticate(token)


def test_renewal_and_policy_changes_are_seen_at_once(client, root_headers):
    client.put("/v1/sys/policies/self-reader", json={"rules": [{"path": "sys/policies", "capabilities": ["list"]}]},
               headers=root_headers)
    created = client.post("/v1/auth/tokens", json={"ttl": 60, "max_ttl": 600, "policies": ["self-reader"]},
                          headers=root_headers).json
    h = {"X-CSM-Token": created["token"]}
    before = client.get("/v1/auth/tokens/self", headers=h).json["expires_at"]
    assert client.get("/v1/sys/policies", headers=h).status_code == 200
    client.post(f"/v1/auth/tokens/{created['accessor']}/renew", json={"increment": 500}, headers=root_headers)
    assert client.get("/v1/auth/tokens/self", headers=h).json["expires_at"] > before
    client.put("/v1/sys/policies/self-reader", json={"rules": [{"path": "nothing", "capabilities": ["read"]}]},
               headers=root_headers)
    assert client.get("/v1/sys/policies", headers=h).status_code == 403


def test_a_lookup_that_raced_a_revoke_is_not_cached():
    from sms.auth.service import Identity, IdentityCache

    cache = IdentityCache(60)
    generation = cache.generation  # a lookup starts reading the database ...
    cache.clear()  # ... a revoke commits and empties the cache ...
    cache.put("digest", Identity("token", "acc"), generation)  # ... the stale result arrives
    assert cache.get("digest") is None
