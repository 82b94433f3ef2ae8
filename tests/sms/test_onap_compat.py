"""ONAP AAF SMS compatibility: onapsmsclient 0.0.4 works unchanged; bodies are byte-identical."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

onapsmsclient = pytest.importorskip("onapsmsclient")

ONAP_RULES = [{"path": "secrets/onap-*", "capabilities": ["create", "read", "update", "delete", "list"]}]


@pytest.fixture
def onap_services(make_services, backend):
    svc = make_services(backend, onap_anonymous_policies="onap-compat")
    svc.auth.write_policy("onap-compat", ONAP_RULES)
    return svc


@pytest.fixture
def onap_app(onap_services):
    from sms.app import create_app

    return create_app(services=onap_services)


@pytest.fixture
def served(onap_app) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, onap_app, threaded=True)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        t.join(timeout=5)


def test_onapsmsclient_drives_every_call_unchanged(served, unique):
    c = onapsmsclient.Client(url=served, timeout=10)
    assert c.getStatus() is False
    dom = f"  onap-{unique}  "  # the client and csm trim names
    uuid = c.createDomain(dom)
    assert len(uuid) == 36
    assert c.storeSecret(dom, " db ", {"user": "admin", "password": "s3cr3t", "port": 5432}) is True
    assert c.storeSecret(dom, "other", {"k": "v"}) is True
    assert sorted(c.getSecretNames(dom)) == ["db", "other"]
    assert c.getSecret(dom, "db") == {"user": "admin", "password": "s3cr3t", "port": 5432}
    assert c.storeSecret(dom, "db", {"user": "admin", "password": "rotated"}) is True  # overwrite
    assert c.getSecret(dom, "db")["password"] == "rotated"
    assert c.deleteSecret(dom, "db") is True
    assert c.getSecretNames(dom) == ["other"]
    # ONAP's clients expect 500 (InternalServerError) for a missing secret or an existing domain
    with pytest.raises(onapsmsclient.InternalServerError):
        c.getSecret(dom, "db")
    with pytest.raises(onapsmsclient.InternalServerError):
        c.createDomain(dom)
    with pytest.raises(onapsmsclient.InvalidRequestException):
        c._request("post", "/v1/sms/domain/" + dom.strip() + "/secret", data="{not json")
    assert c.deleteDomain(dom) is True
    with pytest.raises(onapsmsclient.InternalServerError):
        c.getSecretNames(dom)


def test_outside_the_granted_domains_onap_callers_are_denied(served, unique):
    c = onapsmsclient.Client(url=served, timeout=10)
    with pytest.raises(onapsmsclient.UnexpectedError, match="permission-denied"):
        c.createDomain(f"private-{unique}")


def test_without_configured_policy_compat_callers_are_unauthenticated(client, unique):
    r = client.post("/v1/sms/domain", json={"name": f"onap-{unique}"})
    assert r.status_code == 401
    # a csm token works on the compat routes too
    assert client.get("/v1/sms/quorum/status").status_code == 200


def test_response_bodies_are_byte_identical_to_onap(onap_app, unique):
    c = onap_app.test_client()
    dom = f"onap-{unique}"
    r = c.post("/v1/sms/domain", json={"name": dom})
    assert r.status_code == 201 and r.headers["Content-Type"] == "application/json"
    uuid = r.json["uuid"]
    assert r.data == ('{"uuid":"%s","name":"%s"}' % (uuid, dom)).encode()
    r = c.post(f"/v1/sms/domain/{dom}/secret", json={"name": "s", "values": {"z": "<a&b>", "a": 35, "m": True}})
    assert r.status_code == 201 and r.data == b""
    r = c.get(f"/v1/sms/domain/{dom}/secret/s")
    assert r.status_code == 200
    assert r.data == b'{"name":"s","values":{"a":35,"m":true,"z":"\\u003ca\\u0026b\\u003e"}}'
    assert c.get(f"/v1/sms/domain/{dom}/secret").data == b'{"secretnames":["s"]}'
    assert c.get("/v1/sms/quorum/status").data == b'{"sealstatus":false}'
    r = c.get("/v1/sms/healthcheck")
    assert r.status_code == 200 and r.data == b""
    r = c.delete(f"/v1/sms/domain/{dom}/secret/s")
    assert r.status_code == 204 and r.data == b""
    r = c.delete(f"/v1/sms/domain/{dom}")
    assert r.status_code == 204 and r.data == b""


def test_compat_errors_can_report_native_statuses(make_services, backend, unique):
    from sms.app import create_app

    svc = make_services(backend, onap_anonymous_policies="onap-compat", onap_compat_errors=False)
    svc.auth.write_policy("onap-compat", ONAP_RULES)
    c = create_app(services=svc).test_client()
    c.post("/v1/sms/domain", json={"name": f"onap-{unique}"})
    assert c.get(f"/v1/sms/domain/onap-{unique}/secret/none").status_code == 404
    assert c.post("/v1/sms/domain", json={"name": f"onap-{unique}"}).status_code == 409


def test_onap_writes_are_visible_in_the_native_api_and_audited(onap_app, onap_services, unique):
    root_headers = {"X-CSM-Token": onap_services.auth.create_token(root=True)[0]}
    c = onap_app.test_client()
    dom = f"onap-{unique}"
    c.post("/v1/sms/domain", json={"name": dom})
    c.post(f"/v1/sms/domain/{dom}/secret", json={"name": "s", "values": {"k": "v"}})
    r = c.get(f"/v1/domains/{dom}/secrets/s", headers=root_headers)
    assert r.json["values"] == {"k": "v"}
    actions = [e["action"] for e in onap_services.audit.entries()]
    assert "onap.secret.store" in actions and "onap.domain.create" in actions
    entry = next(e for e in onap_services.audit.entries() if e["action"] == "onap.secret.store")
    assert entry["actor"] == "anonymous:onap-compat"


def test_preload_file_format_imports_idempotently(onap_services, unique, tmp_path):
    import json

    from sms.secrets.preload import import_preload
    from sms.secrets.wiring import secrets_service

    ss = secrets_service(onap_services)
    doc = {"domains": [{"name": f"onap-{unique}", "secrets": [
        {"name": "a", "values": {"user": "x", "n": 1}}, {"name": "b", "values": {"k": "v"}}]}]}
    first = import_preload(ss, doc)
    assert first == {"domains_created": 1, "secrets_created": 2, "secrets_updated": 0, "secrets_unchanged": 0}
    again = import_preload(ss, json.loads(json.dumps(doc)))
    assert again == {"domains_created": 0, "secrets_created": 0, "secrets_updated": 0, "secrets_unchanged": 2}
    assert ss.read(f"onap-{unique}", "a").version == 1
