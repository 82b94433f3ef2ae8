"""The HTTP contract of the CMP endpoints (RFC 6712) and of the management API /v1/cmp."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from client_sdk import cmp
from client_sdk.cmp import FailureInfo
from sms.runtime import Services

from .conftest import CT, REF, SECRET, CmpEnv, build_env


@pytest.fixture
def root(env: CmpEnv) -> dict[str, str]:
    token, _ = env.svc.auth.create_token(root=True, display_name="admin")
    return {"X-CSM-Token": token}


def _error_of(data: bytes) -> cmp.PKIStatusInfo:
    msg = cmp.PKIMessage.decode(data)
    assert isinstance(msg.body, cmp.ErrorBody)
    return msg.body.status_info


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_transport_errors_are_problems_or_cmp_errors_never_500(env: CmpEnv) -> None:
    c = env.client
    r = c.post("/.well-known/cmp", data=b"\x30\x03\x02\x01\x00", headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and r.mimetype == "application/problem+json"
    r = c.get("/.well-known/cmp/p/test")
    assert r.status_code == 405 and r.headers["Allow"].startswith("POST") or "POST" in r.headers["Allow"]
    r = c.post("/.well-known/cmp", data=b"", headers=CT)
    assert r.status_code == 400
    r = c.post("/.well-known/cmp", data=b"\x30" * (env.svc.settings.cmp_max_body_bytes + 1), headers=CT)
    assert r.status_code == 413
    r = c.post("/.well-known/cmp/p/nope", data=b"\x30\x00", headers=CT)
    assert r.status_code == 404 and "nope" in r.get_json()["detail"]
    for junk in (b"\x30\x00", b"not DER at all", b"\x30\x82\xff\xff" + b"\x00" * 10, bytes(range(256))):
        r = c.post("/.well-known/cmp", data=junk, headers=CT)
        assert r.status_code == 200 and r.mimetype == "application/pkixcmp"
        info = _error_of(r.data)
        assert info.fail_info & {FailureInfo.BAD_DATA_FORMAT, FailureInfo.BAD_REQUEST}, info
    entries = env.svc.audit.entries()
    assert [e["action"] for e in entries[-4:]] == ["cmp.undecodable"] * 4
    assert all(e["actor"] == "cmp:test:unauthenticated" for e in entries[-4:])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_no_default_profile_is_404(services: Services, tmp_path: Path) -> None:
    e = build_env(services, tmp_path)
    e.profile("only")
    r = e.client.post("/.well-known/cmp", data=b"\x30\x00", headers=CT)
    assert r.status_code == 404


def test_profile_management_never_returns_secrets(env: CmpEnv, root: dict[str, str]) -> None:
    c = env.client
    anchors = env.root.certificate.public_bytes(serialization.Encoding.PEM).decode()
    body = {"name": "onap", "ca": "issuing", "cert_profile": "tls-server", "secrets": {"onap-ref": "s3cr3t-onap-value"},
            "trust_anchors": anchors, "confirm_timeout": 120, "request_protection": "mac-or-signature"}
    r = c.post("/v1/cmp/profiles", json=body, headers=root)
    assert r.status_code == 201, r.get_json()
    doc = r.get_json()
    assert doc["secret_references"] == ["onap-ref"] and doc["url_path"] == "/.well-known/cmp/p/onap"
    assert doc["trust_anchors"][0]["subject"] == env.root.certificate.subject.rfc4514_string()
    assert c.post("/v1/cmp/profiles", json=body, headers=root).status_code == 409
    for bad in ({**body, "name": "x", "ca": "no-such-ca"}, {**body, "name": "y", "cert_profile": "nope"},
                {**body, "name": "z", "confirm_timeout": 1}, {**body, "name": "w", "trust_anchors": "junk"},
                {**body, "name": "v", "secrets": {"r": "short"}}, {**body, "name": "u", "unknown": 1}):
        r = c.post("/v1/cmp/profiles", json=bad, headers=root)
        assert r.status_code in (400, 422), (bad, r.get_json())
    r = c.patch("/v1/cmp/profiles/onap", json={"secrets": {"second": "another-secret-value"},
                                               "remove_secrets": ["onap-ref"], "approval_required": True},
                headers={**root, "If-Match": '"1"'})
    assert r.status_code == 200 and r.get_json()["secret_references"] == ["second"]
    assert r.get_json()["approval_required"] is True and r.get_json()["version"] == 2
    assert c.patch("/v1/cmp/profiles/onap", json={"poll_interval": 2},
                   headers={**root, "If-Match": '"1"'}).status_code == 409
    listed = c.get("/v1/cmp/profiles", headers=root).get_json()["profiles"]
    assert sorted(p["name"] for p in listed) == ["onap", "test"]
    everything = json.dumps([listed, c.get("/v1/cmp/profiles/onap", headers=root).get_json(),
                             env.svc.audit.entries()])
    assert "s3cr3t-onap-value" not in everything and "another-secret-value" not in everything
    assert SECRET not in everything
    assert c.delete("/v1/cmp/profiles/onap", headers=root).status_code == 204
    assert c.get("/v1/cmp/profiles/onap", headers=root).status_code == 404


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_management_needs_a_token_and_the_right_policy(env: CmpEnv, root: dict[str, str]) -> None:
    c = env.client
    assert c.get("/v1/cmp/profiles").status_code == 401
    r = c.put("/v1/sys/policies/cmp-reader", json={"rules": [
        {"path": "cmp/profiles", "capabilities": ["list"]}, {"path": "cmp/profiles/+", "capabilities": ["read"]}]},
        headers=root)
    assert r.status_code in (200, 201, 204), r.get_json()
    token, _ = env.svc.auth.create_token(policies=["cmp-reader"], display_name="reader")
    h = {"X-CSM-Token": token}
    assert c.get("/v1/cmp/profiles", headers=h).status_code == 200
    assert c.get("/v1/cmp/profiles/test", headers=h).status_code == 200
    assert c.delete("/v1/cmp/profiles/test", headers=h).status_code == 403
    assert c.post("/v1/cmp/requests/test/00ff/approve", headers=h).status_code == 403
    assert c.post("/v1/cmp/sweep", headers=h).status_code == 403
    assert c.post("/v1/cmp/requests/test/00ff/approve", headers=root).status_code == 404
    assert c.post("/v1/cmp/sweep", headers=root).get_json() == {"revoked": 0, "purged": 0}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sdk_client_enrols_over_http_against_the_app(env: CmpEnv) -> None:
    """The codec's own CmpClient (PBM, certConf) through the Flask test client."""
    from tests.client_sdk.cmptools import ec_key, name

    class Direct:
        def send(self, request: bytes) -> bytes:
            r = env.client.post("/.well-known/cmp/p/test", data=request, headers=CT)
            assert r.status_code == 200
            return bytes(r.data)

    c = cmp.CmpClient(Direct(), recipient=env.issuing.certificate.subject, secret=SECRET.encode(),
                      reference=REF.encode(), pbm_iterations=500)
    got = c.ir(ec_key(), subject=name("sdk.example.com"))
    assert got.certificate.issuer == env.issuing.certificate.subject and not got.implicitly_confirmed
    assert env.cmp.transactions.count(profile="test") == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_changed_secret_never_meets_the_cached_response_mac_key(env: CmpEnv) -> None:
    """Responses reuse a salt (and its derived key) per secret for a minute; a secret change must
    not: the next response is MAC'd with the new secret."""
    from client_sdk.cmp import builders
    from tests.client_sdk.cmptools import ec_key, name

    new_secret = "pbm-Secret-4712-rotated"

    def response(secret: str) -> cmp.PKIMessage:
        body = cmp.IrBody((builders.cert_request(ec_key(), subject=name("mac.example.com")),))
        req = cmp.protect_with_pbm(cmp.PKIMessage(builders.request_header(recipient=env.issuing.certificate.subject),
                                                  body), secret.encode(), sender_kid=REF.encode(), iteration_count=500)
        r = env.client.post("/.well-known/cmp/p/test", data=req.encode(), headers=CT)
        assert r.status_code == 200
        return cmp.PKIMessage.decode(bytes(r.data))

    def salt(msg: cmp.PKIMessage) -> bytes:
        assert isinstance(msg.header.protection_alg, cmp.PBMParameters)
        return msg.header.protection_alg.salt

    a, b = response(SECRET), response(SECRET)
    cmp.verify_pbm(a, SECRET.encode())
    cmp.verify_pbm(b, SECRET.encode())
    assert salt(a) == salt(b)  # the cached key
    env.cmp.update_profile("test", {}, set_secrets={REF: new_secret})
    c = response(new_secret)
    assert isinstance(c.body, cmp.IpBody)
    cmp.verify_pbm(c, new_secret.encode())
    with pytest.raises(cmp.errors.BadMessageCheck):
        cmp.verify_pbm(c, SECRET.encode())
    assert salt(c) != salt(a)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_changed_secret_never_meets_a_cached_request_mac_key(env: CmpEnv) -> None:
    """Request BASEKEYs are cached per (senderKID, salt): after a secret change a request MAC'd
    with the old secret and an already-cached salt is refused, one with the new secret accepted."""
    from client_sdk.cmp import builders
    from tests.client_sdk.cmptools import ec_key, name

    salt = b"r" * 16
    new_secret = "pbm-Secret-4713-rotated"

    def send(secret: str) -> cmp.PKIMessage:
        body = cmp.IrBody((builders.cert_request(ec_key(), subject=name("salt.example.com")),))
        req = cmp.protect_with_pbm(cmp.PKIMessage(builders.request_header(recipient=env.issuing.certificate.subject),
                                                  body), secret.encode(), sender_kid=REF.encode(), iteration_count=500,
                                   salt=salt)
        r = env.client.post("/.well-known/cmp/p/test", data=req.encode(), headers=CT)
        assert r.status_code == 200
        return cmp.PKIMessage.decode(bytes(r.data))

    assert isinstance(send(SECRET).body, cmp.IpBody)
    assert isinstance(send(SECRET).body, cmp.IpBody)  # the cached key for this salt
    env.cmp.update_profile("test", {}, set_secrets={REF: new_secret})
    old = send(SECRET)
    assert isinstance(old.body, cmp.ErrorBody)
    assert old.body.status_info.fail_info == {FailureInfo.BAD_MESSAGE_CHECK}
    assert isinstance(send(new_secret).body, cmp.IpBody)
