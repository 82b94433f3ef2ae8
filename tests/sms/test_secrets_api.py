"""The native secrets API over the Flask test client, on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest

VALUES = {"username": "app", "password": "pa55-<&>-wörd", "port": 5432, "tls": True, "ratio": 0.5}


@pytest.fixture
def h(root_headers):
    return root_headers


@pytest.fixture
def dom(client, h, unique):
    name = f"dom-{unique}"
    r = client.post("/v1/domains", json={"name": name}, headers=h)
    assert r.status_code == 201, r.json
    return name


def url(dom, name="", suffix=""):
    return f"/v1/domains/{dom}/secrets" + (f"/{name}" if name else "") + suffix


def test_domain_lifecycle_create_list_read_delete(client, h, unique):
    name = f"life-{unique}"
    r = client.post("/v1/domains", json={"name": name, "max_versions": 3}, headers=h)
    assert r.status_code == 201
    assert r.json["name"] == name and r.json["key_version"] == 1 and r.json["max_versions"] == 3
    assert name in [d["name"] for d in client.get("/v1/domains", headers=h).json["domains"]]
    assert client.get(f"/v1/domains/{name}", headers=h).json["secrets"] == 0
    assert client.post("/v1/domains", json={"name": name}, headers=h).status_code == 409
    assert client.delete(f"/v1/domains/{name}", headers=h).status_code == 204
    r = client.get(f"/v1/domains/{name}", headers=h)
    assert r.status_code == 404 and r.mimetype == "application/problem+json"


def test_non_empty_domain_delete_is_refused_unless_forced(client, h, dom):
    client.post(url(dom), json={"name": "s", "values": VALUES}, headers=h)
    r = client.delete(f"/v1/domains/{dom}", headers=h)
    assert r.status_code == 409 and r.json["secrets"] == 1
    assert client.get(url(dom, "s"), headers=h).status_code == 200
    assert client.delete(f"/v1/domains/{dom}?force=true", headers=h).status_code == 204
    assert client.get(url(dom, "s"), headers=h).status_code == 404


def test_secret_round_trip_keeps_json_types(client, h, dom):
    r = client.post(url(dom), json={"name": "db", "values": VALUES}, headers=h)
    assert r.status_code == 201 and r.json["version"] == 1 and r.headers["ETag"] == '"1"'
    r = client.get(url(dom, "db"), headers=h)
    assert r.status_code == 200
    assert r.json["values"] == VALUES and r.json["version"] == 1
    assert client.get(url(dom), headers=h).json["names"] == ["db"]


def test_create_existing_secret_conflicts_and_update_of_missing_is_404(client, h, dom):
    client.post(url(dom), json={"name": "db", "values": VALUES}, headers=h)
    assert client.post(url(dom), json={"name": "db", "values": VALUES}, headers=h).status_code == 409
    assert client.put(url(dom, "nope"), json={"values": VALUES}, headers=h).status_code == 404


def test_every_write_is_a_new_version_and_old_versions_stay_readable(client, h, dom):
    client.post(url(dom), json={"name": "db", "values": {"v": 1}}, headers=h)
    assert client.put(url(dom, "db"), json={"values": {"v": 2}}, headers=h).json["version"] == 2
    assert client.patch(url(dom, "db"), json={"values": {"w": 3}}, headers=h).json["version"] == 3
    assert client.get(url(dom, "db"), headers=h).json["values"] == {"v": 2, "w": 3}
    assert client.get(url(dom, "db") + "?version=1", headers=h).json["values"] == {"v": 1}
    assert client.get(url(dom, "db") + "?version=9", headers=h).status_code == 404


def test_patch_with_null_removes_a_key(client, h, dom):
    client.post(url(dom), json={"name": "db", "values": {"a": 1, "b": 2}}, headers=h)
    client.patch(url(dom, "db"), json={"values": {"a": None, "c": "x"}}, headers=h)
    assert client.get(url(dom, "db"), headers=h).json["values"] == {"b": 2, "c": "x"}


def test_check_and_set_with_stale_version_conflicts(client, h, dom):
    client.post(url(dom), json={"name": "db", "values": {"v": 1}}, headers=h)
    assert client.put(url(dom, "db"), json={"values": {"v": 2}, "cas": 1}, headers=h).status_code == 200
    r = client.put(url(dom, "db"), json={"values": {"v": 3}, "cas": 1}, headers=h)
    assert r.status_code == 409 and r.json["current_version"] == 2 and r.json["expected_version"] == 1
    r = client.put(url(dom, "db"), json={"values": {"v": 3}}, headers={**h, "If-Match": '"1"'})
    assert r.status_code == 409
    r = client.patch(url(dom, "db"), json={"values": {"v": 3}}, headers={**h, "If-Match": '"2"'})
    assert r.status_code == 200 and r.json["version"] == 3
    assert client.get(url(dom, "db"), headers=h).json["values"] == {"v": 3}


def test_soft_delete_undelete_and_destroy(client, h, dom):
    client.post(url(dom), json={"name": "db", "values": {"v": 1}}, headers=h)
    client.put(url(dom, "db"), json={"values": {"v": 2}}, headers=h)
    assert client.delete(url(dom, "db"), headers=h).status_code == 204
    r = client.get(url(dom, "db"), headers=h)
    assert r.status_code == 404 and r.json["state"] == "deleted"
    assert client.get(url(dom, "db") + "?version=1", headers=h).status_code == 200
    r = client.post(url(dom, "db", "/undelete"), json={"versions": [2]}, headers=h)
    assert r.status_code == 200
    assert client.get(url(dom, "db"), headers=h).json["values"] == {"v": 2}
    r = client.post(url(dom, "db", "/destroy"), json={"versions": [1]}, headers=h)
    assert r.status_code == 200 and r.json["versions"][0]["destroyed"] is True
    r = client.get(url(dom, "db") + "?version=1", headers=h)
    assert r.status_code == 404 and r.json["state"] == "destroyed"
    assert client.post(url(dom, "db", "/undelete"), json={"versions": [1]}, headers=h).status_code == 200
    assert client.get(url(dom, "db") + "?version=1", headers=h).status_code == 404  # gone for good
    assert client.delete(url(dom, "db", "/metadata"), headers=h).status_code == 204
    assert client.get(url(dom, "db", "/metadata"), headers=h).status_code == 404
    assert client.get(url(dom), headers=h).json["names"] == []


def test_metadata_reports_times_versions_and_the_configured_maximum(client, h, dom):
    client.post(url(dom), json={"name": "db", "values": {"v": 0}}, headers=h)
    r = client.put(url(dom, "db", "/metadata"), json={"max_versions": 3}, headers=h)
    assert r.status_code == 200 and r.json["max_versions"] == 3
    for i in range(1, 6):
        client.put(url(dom, "db"), json={"values": {"v": i}}, headers=h)
    m = client.get(url(dom, "db", "/metadata"), headers=h).json
    assert m["current_version"] == 6 and m["versions_kept"] == 3 and m["oldest_version"] == 4
    assert [v["version"] for v in m["versions"]] == [4, 5, 6]
    assert m["created_time"].endswith("Z") and m["updated_time"] >= m["created_time"]
    assert client.get(url(dom, "db") + "?version=3", headers=h).status_code == 404


def test_domain_max_versions_applies_to_its_secrets(client, h, dom):
    assert client.patch(f"/v1/domains/{dom}", json={"max_versions": 2}, headers=h).status_code == 200
    client.post(url(dom), json={"name": "db", "values": {"v": 0}}, headers=h)
    for i in range(4):
        client.put(url(dom, "db"), json={"values": {"v": i}}, headers=h)
    m = client.get(url(dom, "db", "/metadata"), headers=h).json
    assert m["versions_kept"] == 2 and m["max_versions"] == 2


def test_secret_routes_are_in_the_openapi_document(client):
    paths = client.get("/v1/openapi/openapi.json").json["paths"]
    for p in ("/v1/domains", "/v1/domains/{domain}", "/v1/domains/{domain}/secrets",
              "/v1/domains/{domain}/secrets/{name}", "/v1/domains/{domain}/secrets/{name}/metadata",
              "/v1/references/redeem", "/v1/sms/domain", "/v1/sms/domain/{domain}/secret/{name}"):
        assert p in paths, p


def test_concurrent_check_and_set_increments_never_lose_an_update(app, h, dom):
    """Threads of one process share write transactions (group commit on SQLite): a stale CAS in the
    same batch as the write that made it stale must still fail, and no acknowledged write is lost."""
    import threading

    client = app.test_client()
    assert client.post(url(dom), json={"name": "ctr", "values": {"n": 0}}, headers=h).status_code == 201
    conflicts: list[int] = []

    def bump(times: int) -> None:
        c = app.test_client()
        done = 0
        while done < times:
            cur = c.get(url(dom, "ctr"), headers=h).json
            r = c.put(url(dom, "ctr"), json={"values": {"n": cur["values"]["n"] + 1}, "cas": cur["version"]},
                      headers=h)
            if r.status_code == 409:
                conflicts.append(1)
                continue
            assert r.status_code == 200, r.json
            done += 1

    threads = [threading.Thread(target=bump, args=(6,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    final = client.get(url(dom, "ctr"), headers=h).json
    assert final["values"]["n"] == 36 and final["version"] == 37
