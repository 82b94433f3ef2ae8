"""Every error is an RFC 9457 problem document: never HTML, never a stack trace."""
from __future__ import annotations

import io
import json
import logging

import pytest
from flask.views import MethodView
from flask_smorest import Blueprint

from sms.app import FEATURES, create_app

boom = Blueprint("boom", __name__, url_prefix="/v1/test")


@boom.route("/boom")
class Boom(MethodView):
    def get(self):
        raise RuntimeError("secret-detail-that-must-not-leak /etc/passwd")


def assert_problem(r, status):
    assert r.status_code == status, r.data[:300]
    assert r.mimetype == "application/problem+json"
    body = r.json
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    assert body["type"].startswith("https://csm.dev/problems/")
    text = r.get_data(as_text=True)
    assert "Traceback" not in text and "<html" not in text.lower()
    return body


@pytest.fixture
def boom_client(services):
    import sys

    app = create_app(services=services, features=[*FEATURES, (__name__, ("boom",))])
    assert sys.modules[__name__].boom is boom
    return app.test_client()


def test_unknown_route(client):
    assert_problem(client.get("/v1/does/not/exist"), 404)


def test_wrong_method(client):
    body = assert_problem(client.patch("/v1/sys/health"), 405)
    assert body["type"].endswith("/method-not-allowed")


def test_oversized_body(client, root_headers, services):
    big = b"{" + b'"a":"' + b"x" * (services.settings.max_body_bytes + 10) + b'"}'
    r = client.post("/v1/auth/tokens", data=big, content_type="application/json",
                    headers={**root_headers, "X-Request-ID": "big-1"})
    body = assert_problem(r, 413)
    assert body["request_id"] == r.headers["X-Request-ID"] == "big-1"  # refused before the request hooks


def test_malformed_json(client, root_headers):
    assert_problem(client.post("/v1/auth/tokens", data=b"{not json", content_type="application/json",
                               headers=root_headers), 400)


def test_validation_error_names_the_field(client, root_headers):
    body = assert_problem(client.post("/v1/auth/tokens", json={"ttl": "soon", "bogus": 1}, headers=root_headers), 422)
    assert "ttl" in body["errors"]["json"] and "bogus" in body["errors"]["json"]


def test_internal_failure_is_a_generic_problem_and_is_logged(boom_client, root_headers, caplog):
    with caplog.at_level(logging.ERROR):
        body = assert_problem(boom_client.get("/v1/test/boom"), 500)
    assert "secret-detail" not in str(body) and "RuntimeError" not in str(body)
    assert body["request_id"] in caplog.text


def test_problem_carries_request_id_header(client):
    r = client.get("/nowhere", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    assert r.json["request_id"] == "abc-123"


def test_openapi_document_is_served(client):
    r = client.get("/v1/openapi/openapi.json")
    assert r.status_code == 200
    paths = r.json["paths"]
    assert "/v1/auth/tokens" in paths and "/v1/sys/ready" in paths and "/v1/sys/policies/{name}" in paths
    assert client.get("/v1/openapi/ui").status_code == 200


class _CountingInput(io.BytesIO):
    """A request body stream that remembers how much of it was read."""


def _call(app, method, path, body, headers=(), content_length=None):
    stream = _CountingInput(body)
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "t",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "wsgi.input": stream, "wsgi.errors": io.StringIO(), "REMOTE_ADDR": "127.0.0.1",
               "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(body) if content_length is None else content_length)}
    environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers})
    status = []
    out = b"".join(app(environ, lambda st, _h, _e=None: status.append(st)))
    return int(status[0].split()[0]), out, stream


def test_a_refused_body_is_read_to_its_end_before_the_answer(app, services, root_token):
    """Answered before the body was read, a refusal would leave the client sending; over HTTP/2
    the stream is then reset and the client may see a stream error instead of the 413."""
    big = b'{"a":"' + b"x" * (services.settings.max_body_bytes + 10) + b'"}'
    st, out, stream = _call(app, "POST", "/v1/auth/tokens", big, [("X-CSM-Token", root_token)])
    assert st == 413 and json.loads(out)["status"] == 413
    assert stream.tell() == len(big)  # all of it read (and dropped)
    st, _, stream = _call(app, "POST", "/v1/auth/tokens", b'{"ttl": 60}', [("X-CSM-Token", "nope")])
    assert st == 401 and stream.tell() == len(b'{"ttl": 60}')
    # never past the body: what follows it on a kept-alive connection is the next request's
    body = b'{"ttl": 60}'
    st, _, stream = _call(app, "POST", "/v1/auth/tokens", body + b"POST /next HTTP/1.1", [("X-CSM-Token", "nope")],
                          content_length=len(body))
    assert st == 401 and stream.tell() == len(body)
    # a body declared larger than the drain limit is left alone
    from sms.web import DRAIN_LIMIT
    st, _, stream = _call(app, "POST", "/v1/auth/tokens", b"x" * 1000, [("X-CSM-Token", root_token)],
                          content_length=DRAIN_LIMIT + 1)
    assert st == 413 and stream.tell() == 0
