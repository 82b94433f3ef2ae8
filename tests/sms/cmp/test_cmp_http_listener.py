"""The plain-HTTP CMP-only listener: its settings rules and the path filter it serves through
(the listener itself is driven by openssl in test_serve_cmp.py)."""
from __future__ import annotations

import json
from typing import Any

import pytest

from sms.config import load_settings
from sms.errors import ConfigError
from sms.server import cmp_only


def test_cmp_http_listener_is_off_by_default_and_on_loopback_with_host() -> None:
    assert load_settings(env={}).cmp_http_port == 0 and load_settings(env={}).cmp_http_url == ""
    s = load_settings(env={"CSM_CMP_HTTP_PORT": "8080"})
    assert s.cmp_http_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize("env, fragment", [
    ({"CSM_CMP_HTTP_PORT": "8080", "CSM_HOST": "0.0.0.0"}, "cmp_http_host"),
    ({"CSM_CMP_HTTP_PORT": "70000"}, "cmp_http_port"),
    ({"CSM_CMP_HTTP_PORT": "8443"}, "differ"),
])
def test_cmp_http_listener_settings_refused(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(env=env)


def test_explicit_cmp_http_host_may_be_a_network_address() -> None:
    s = load_settings(env={"CSM_CMP_HTTP_PORT": "8080", "CSM_HOST": "0.0.0.0", "CSM_CMP_HTTP_HOST": "::"})
    assert s.cmp_http_url == "http://[::]:8080"


def test_cmp_only_passes_cmp_paths_and_404s_the_rest() -> None:
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"cmp"]

    wrapped = cmp_only(app)
    statuses: list[str] = []

    def call(path: str) -> tuple[str, bytes]:
        body = b"".join(wrapped({"PATH_INFO": path}, lambda st, h: statuses.append(st)))
        return statuses[-1], body

    for path in ("/.well-known/cmp", "/.well-known/cmp/p/nf"):
        assert call(path) == ("200 OK", b"cmp")
    for path in ("/v1/sys/ready", "/.well-known/cmpx", "/", "/.well-known/est"):
        status, body = call(path)
        assert status.startswith("404") and json.loads(body)["status"] == 404
    assert seen == ["/.well-known/cmp", "/.well-known/cmp/p/nf"]
