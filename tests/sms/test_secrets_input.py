"""Bad input gets a clear 4xx problem document and never damages what is stored."""
from __future__ import annotations

import json

import pytest

GOOD = {"user": "u", "pw": "p"}


@pytest.fixture
def h(root_headers):
    return root_headers


@pytest.fixture
def dom(client, h, unique):
    name = f"in-{unique}"
    assert client.post("/v1/domains", json={"name": name}, headers=h).status_code == 201
    assert client.post(f"/v1/domains/{name}/secrets", json={"name": "keep", "values": GOOD}, headers=h).status_code == 201
    return name


def assert_problem(r, *statuses):
    assert r.status_code in statuses, (r.status_code, r.get_data(as_text=True)[:300])
    assert r.mimetype == "application/problem+json"
    assert r.json["status"] == r.status_code and r.json["detail"]


def assert_intact(client, h, dom):
    r = client.get(f"/v1/domains/{dom}/secrets/keep", headers=h)
    assert r.status_code == 200 and r.json["values"] == GOOD and r.json["version"] == 1
    assert client.get(f"/v1/domains/{dom}/secrets", headers=h).json["names"] == ["keep"]


@pytest.mark.parametrize("name", ["", ".", "..", "a..b", ".hidden", "-x", "with space", "ünïcode", "名前",
                                  "a" * 129, "semi;colon", "tab\tname", "nul\x00"])
def test_bad_secret_names_are_refused(client, h, dom, name):
    r = client.post(f"/v1/domains/{dom}/secrets", json={"name": name, "values": GOOD}, headers=h)
    assert_problem(r, 400, 422)
    assert_intact(client, h, dom)


@pytest.mark.parametrize("name", ["", "..", "a/b", "ünïcode", "a" * 65, " x"])
def test_bad_domain_names_are_refused(client, h, name):
    assert_problem(client.post("/v1/domains", json={"name": name}, headers=h), 400, 422)


@pytest.mark.parametrize("path", ["a/b", "a%2Fb", "x/y/z"])
def test_slashes_in_secret_names_are_refused(client, h, dom, path):
    for method in ("get", "put", "delete"):
        r = getattr(client, method)(f"/v1/domains/{dom}/secrets/{path}", headers=h,
                                    json={"values": GOOD} if method == "put" else None)
        assert_problem(r, 400, 404)
    assert_intact(client, h, dom)


def test_dot_segments_in_url_do_not_escape(client, h, dom):
    r = client.get(f"/v1/domains/{dom}/secrets/..", headers=h)
    assert_problem(r, 400, 404)
    r = client.put(f"/v1/domains/{dom}/secrets/.x", json={"values": GOOD}, headers=h)
    assert_problem(r, 400, 404)


@pytest.mark.parametrize("values", [
    {}, [], "string", 5, None, {"k": None}, {"k": {"nested": 1}}, {"k": [1, 2]}, {"": "empty key"},
    {"k\n": "control"}, {"k" * 257: "long key"},
])
def test_wrong_value_types_are_refused(client, h, dom, values):
    r = client.put(f"/v1/domains/{dom}/secrets/keep", json={"values": values}, headers=h)
    assert_problem(r, 400, 422)
    assert_intact(client, h, dom)


def test_unknown_fields_are_refused(client, h, dom):
    r = client.put(f"/v1/domains/{dom}/secrets/keep", json={"values": GOOD, "ttl": 5}, headers=h)
    assert_problem(r, 422)
    r = client.post("/v1/domains", json={"name": "z", "colour": "blue"}, headers=h)
    assert_problem(r, 422)
    assert_intact(client, h, dom)


def test_wrong_json_types_for_fields_are_refused(client, h, dom):
    for body in ({"values": GOOD, "cas": "1"}, {"values": GOOD, "cas": True}, {"values": "x"}, [GOOD]):
        assert_problem(client.put(f"/v1/domains/{dom}/secrets/keep", json=body, headers=h), 400, 422)
    assert_intact(client, h, dom)


def test_invalid_json_and_wrong_content_type(client, h, dom):
    r = client.put(f"/v1/domains/{dom}/secrets/keep", data=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert_problem(r, 400, 422)
    r = client.put(f"/v1/domains/{dom}/secrets/keep", data=b"values=1", headers={**h, "Content-Type": "text/plain"})
    assert_problem(r, 400, 415, 422)
    assert_intact(client, h, dom)


def test_deeply_nested_json_is_refused(client, h, dom):
    deep = "[" * 100000 + "]" * 100000
    r = client.put(f"/v1/domains/{dom}/secrets/keep", data=('{"values":' + deep + "}").encode(),
                   headers={**h, "Content-Type": "application/json"})
    assert_problem(r, 400, 422)
    nested = {"values": {"k": json.loads("[" * 50 + "]" * 50)}}
    assert_problem(client.put(f"/v1/domains/{dom}/secrets/keep", json=nested, headers=h), 400)
    assert_intact(client, h, dom)


def test_megabyte_bodies_are_refused(client, h, dom):
    big = {"values": {"k": "x" * (2 * 1024 * 1024)}}
    assert_problem(client.put(f"/v1/domains/{dom}/secrets/keep", json=big, headers=h), 413)
    under_body_limit = {"values": {"k": "x" * 70000}}  # fits the body limit, not the value limit
    assert_problem(client.put(f"/v1/domains/{dom}/secrets/keep", json=under_body_limit, headers=h), 413)
    many = {"values": {f"k{i}": i for i in range(300)}}
    assert_problem(client.put(f"/v1/domains/{dom}/secrets/keep", json=many, headers=h), 413)
    assert_intact(client, h, dom)


def test_bad_versions_and_limits_are_refused(client, h, dom):
    base = f"/v1/domains/{dom}/secrets/keep"
    assert_problem(client.get(base + "?version=0", headers=h), 422)
    assert_problem(client.get(base + "?version=abc", headers=h), 422)
    assert_problem(client.post(base + "/destroy", json={"versions": []}, headers=h), 422)
    assert_problem(client.post(base + "/destroy", json={"versions": ["1"]}, headers=h), 422)
    assert_problem(client.put(base + "/metadata", json={"max_versions": 1000}, headers=h), 422)
    assert_problem(client.put(base, json={"values": GOOD}, headers={**h, "If-Match": "nope"}), 400)
    assert_intact(client, h, dom)


def test_name_checks_hold_after_names_were_accepted_before():
    from sms.secrets.errors import InvalidName
    from sms.secrets.limits import check_name

    long_name = "a" * 100  # a valid secret name, too long for a domain
    for _ in range(3):  # accepted names are remembered; that must not widen what is accepted
        assert check_name(long_name) == long_name
        with pytest.raises(InvalidName):
            check_name(long_name, kind="domain")
        assert check_name("db.main", kind="domain") == "db.main"
        for bad in ("", "a..b", "a/b", "-x", "é", None, 5, "a" * 129):
            with pytest.raises(InvalidName):
                check_name(bad)
