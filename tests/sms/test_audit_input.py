"""Hostile bytes in request paths (NUL, invalid UTF-8) are refused cleanly and still audited:
PostgreSQL's text type rejects NUL, so the audit record must not carry it raw."""
from __future__ import annotations


PATHS = [
    "/v1/domains/%00x",
    "/v1/domains/a%00b/secrets/c",
    "/v1/domains/%ff%fe/secrets/%c3%28",
    "/v1/domains/d/secrets/%00",
    "/v1/auth/tokens/%00x",
    "/v1/auth/tokens/%ff%00",
    "/v1/sys/policies/a%00b",
    "/v1/sys/policies/%c3%28",
]


def test_nul_and_invalid_utf8_in_paths_are_refused_audited_and_the_chain_verifies(client, root_headers, services):
    for path in PATHS:
        before = services.audit.verify().entries
        r = client.get(path, headers=root_headers)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.get_data(as_text=True))
        assert r.mimetype == "application/problem+json"
        assert "\x00" not in r.get_data(as_text=True)
        report = services.audit.verify()
        assert report.ok, report.problem
        assert report.entries == before + 1, path
        entry = services.audit.entries(after=before)[-1]
        assert "\x00" not in entry["resource"] and entry["status"] == r.status_code


def test_anonymous_request_with_nul_is_refused_and_audited(client, services):
    before = services.audit.verify().entries
    r = client.get("/v1/sys/policies/%00")
    assert r.status_code == 401 and r.mimetype == "application/problem+json"
    report = services.audit.verify()
    assert report.ok and report.entries == before + 1
    assert services.audit.entries(after=before)[-1]["resource"] == "sys/policies/\\x00"


def test_canonical_form_is_unchanged_for_entries_already_written():
    """Entries written before keep verifying: the canonical JSON is byte for byte what
    json.dumps(sort_keys, compact, ensure_ascii=False) gave."""
    import json

    from sms.audit.service import AuditEvent, _canonical

    ev = AuditEvent("token:ä\u2028", "secrets.read", "secrets/d/\\x00é", "ok", 200, "rid", "::1",
                    {"z": [1, 2.5, None], "a": {"y": "ü", "b": True}, "method": "GET"})
    doc = {"seq": 7, "ts": "t", "actor": ev.actor, "action": ev.action, "resource": ev.resource,
           "outcome": ev.outcome, "status": ev.status, "request_id": ev.request_id, "remote": ev.remote,
           "detail": ev.detail, "prev": "p"}
    assert _canonical(7, "t", ev, "p") == json.dumps(doc, sort_keys=True, separators=(",", ":"),
                                                     ensure_ascii=False).encode()
