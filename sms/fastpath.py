"""Fast routes: the plain success case of a few hot routes, answered without Flask.

A request through Flask + flask-smorest + werkzeug costs about 0.4 ms of CPU before the route
does anything, as much as the route's own work on the hottest ones (a secret read: auth cache
hit, one SELECT, one token decrypt, one audit entry). A feature may therefore register a *fast
handler* for a route (:func:`fast_route`, at blueprint registration). :class:`FastPath`, a WSGI
middleware around Flask's ``wsgi_app``, gives a matching request to that handler first.

The contract that keeps behaviour identical:

* A fast handler serves only the plain success case, with the same body, status, headers and
  audit entry as the Flask route. On anything else — no token (client certificates), an
  unknown token, a denied capability, an unusual name, a query string, a missing resource,
  an error of any kind — it *declines* (returns ``None`` or raises), and the request goes to
  Flask unchanged, which answers it with its problem document and audit entry.
* Before it declines, a handler must not have changed anything: a write runs inside its
  transaction (with its audit entry attached, as :func:`sms.web.guard` does) and an error
  inside it rolls back; a read appends its audit entry last, after everything else succeeded.
* The body, if one was read, is handed back to Flask as a fresh ``wsgi.input``.

``Settings.fast_routes = false`` turns the middleware off (every request through Flask); the
tests run the same requests both ways and compare the answers byte for byte.
"""
from __future__ import annotations

import io
import itertools
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from .audit.service import AuditEvent
from .auth.service import Identity
from .runtime import Services

log = logging.getLogger("csm.fastpath")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ENV_TOKEN = "HTTP_X_CSM_TOKEN"
_JSON_TYPES = ("application/json", "application/json; charset=utf-8")
_STATUS_LINES = {200: "200 OK", 201: "201 CREATED"}


_ids = itertools.count()
_id_prefix = ""


def _new_id_prefix() -> None:
    global _id_prefix
    _id_prefix = secrets.token_hex(4)


_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    """A request id unique within the deployment: 8 random hex digits per process (new in a
    forked child), then a counter (16 hex digits in all). Cheaper than 8 random bytes per
    request; not a secret."""
    return f"{_id_prefix}{next(_ids) & 0xFFFFFFFF:08x}"


class FastRequest:
    """What a fast handler sees of a request."""

    __slots__ = ("environ", "services", "args", "request_id", "identity", "body", "done")

    def __init__(self, environ: dict[str, Any], services: Services, args: tuple[str, ...]) -> None:
        self.environ = environ
        self.services = services
        self.args = args
        rid = environ.get("HTTP_X_REQUEST_ID")
        self.request_id = rid if rid and _REQUEST_ID_RE.match(rid) else new_request_id()
        self.identity: Identity | None = None
        self.body: bytes | None = None
        self.done = False  # set once the request changed something: from then on it is never declined

    def authenticate(self) -> Identity | None:
        """The caller's token identity, or None (no token, or not a valid one: Flask answers)."""
        tok = self.environ.get(_ENV_TOKEN)
        if not tok:
            return None
        try:
            self.identity = self.services.auth.authenticate(str(tok).strip())
        except Exception:  # noqa: BLE001 - Flask gives the 401 and its audit entry
            return None
        return self.identity

    def read_body(self, max_bytes: int, content_types: tuple[str, ...]) -> bytes | None:
        """The body, if its Content-Type (lower-cased) is one of ``content_types`` and its
        Content-Length within ``max_bytes``; else None. Kept for Flask if the handler declines."""
        env = self.environ
        if env.get("CONTENT_TYPE", "").lower() not in content_types:
            return None
        length = env.get("CONTENT_LENGTH", "")
        if not length.isdigit() or not 0 < int(length) <= max_bytes:
            return None
        body = env["wsgi.input"].read(int(length))
        self.body = body
        return body if len(body) == int(length) else None

    def json_body(self, max_bytes: int) -> Any:
        """The JSON body (``Content-Type: application/json``, within ``max_bytes``), or None."""
        body = self.read_body(max_bytes, _JSON_TYPES)
        if body is None:
            return None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            return None

    def append_audit(self, ev: AuditEvent) -> None:
        """Append a read's audit entry (its last step). Fails closed like :func:`sms.web.record_audit`:
        an entry that cannot be written refuses the request with a 503."""
        try:
            self.services.audit.append(ev)
        except Exception as exc:
            raise AuditRefused(ev.request_id, exc) from exc
        self.done = True

    def event(self, action: str, resource: str, status: int, detail: dict[str, Any]) -> AuditEvent:
        """The audit entry :func:`sms.web.guard` would record for this request (success)."""
        assert self.identity is not None
        return AuditEvent(actor=self.identity.label, action=action, resource=resource, outcome="ok", status=status,
                          request_id=self.request_id, remote=self.environ.get("REMOTE_ADDR") or "",
                          detail={"method": self.environ["REQUEST_METHOD"], **detail})


class AuditRefused(Exception):
    """The audit log could not be written: the request is refused with a 503 (not declined)."""


@dataclass(frozen=True)
class FastResponse:
    status: int
    doc: Any  # JSON document
    headers: tuple[tuple[str, str], ...] = ()
    raw: bytes | None = None  # the body as it is (then doc is unused): JSON as json_bytes writes it, or other
    content_type: str = "application/json"


FastHandler = Callable[[FastRequest], FastResponse | None]


def json_bytes(doc: Any) -> bytes:
    """A JSON document exactly as the app's Flask JSON provider writes it (compact, ASCII, newline)."""
    return _JSON(doc).encode() + b"\n"


_JSON = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: FastHandler
    query: bool


def fast_route(app: Any, method: str, pattern: str, handler: FastHandler, *, query: bool = False) -> None:
    """Register ``handler`` for ``method`` on paths fully matching ``pattern`` (its groups are
    the handler's ``args``). Requests with a query string reach it only with ``query=True`` (the
    handler then reads ``QUERY_STRING`` itself). Call at blueprint registration; :func:`install`
    wires them."""
    app.extensions.setdefault("csm_fast_routes", []).append(_Route(method, re.compile(pattern), handler, query))


class FastPath:
    """WSGI middleware: registered fast handlers first, Flask for the rest and for declines."""

    def __init__(self, wsgi_app: Callable[..., Any], routes: Iterable[_Route], services: Services) -> None:
        self.wsgi_app = wsgi_app
        self.services = services
        self.served = 0  # statistics (tests, benchmarks); approximate under threads
        self.declined = 0
        self.by_method: dict[str, list[_Route]] = {}
        for r in routes:
            self.by_method.setdefault(r.method, []).append(r)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        routes = self.by_method.get(environ.get("REQUEST_METHOD", ""))
        if routes:
            path = environ.get("PATH_INFO", "")
            query = bool(environ.get("QUERY_STRING"))
            for route in routes:
                m = route.pattern.fullmatch(path)
                if m is not None and (route.query or not query):
                    return self._serve(route, m.groups(), environ, start_response)
        return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]

    def _serve(self, route: _Route, args: tuple[str, ...], environ: dict[str, Any],
               start_response: Callable[..., Any]) -> Iterable[bytes]:
        req = FastRequest(environ, self.services, args)
        try:
            out = route.handler(req)
        except AuditRefused as exc:
            log.error("audit append failed for request %s: %s", req.request_id, type(exc.__cause__).__name__)
            return _problem(start_response, req, 503, "unavailable",
                            "the audit log cannot be written; request refused", (("Retry-After", "5"),))
        except Exception as exc:  # noqa: BLE001 - declined: Flask answers (and reports) it
            if req.done:  # something was written: answering it again through Flask would repeat it
                log.error("request %s failed after its write: %s", req.request_id, type(exc).__name__, exc_info=exc)
                return _problem(start_response, req, 500, "internal", "an internal error occurred; it has been logged")
            log.debug("fast route %s declined: %s", route.pattern.pattern, type(exc).__name__)
            out = None
        if out is None:
            self.declined += 1
            if req.body is not None:
                environ["wsgi.input"] = io.BytesIO(req.body)
            environ["HTTP_X_REQUEST_ID"] = req.request_id  # the same id in Flask's answer
            return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]
        self.served += 1
        body = out.raw if out.raw is not None else json_bytes(out.doc)
        headers = [("Content-Type", out.content_type), ("Content-Length", str(len(body))), *out.headers,
                   ("X-Request-ID", req.request_id)]
        # as sms.web.add_common_headers: a handler's own Cache-Control stays where it is
        if not any(k == "Cache-Control" for k, _ in out.headers):
            headers.append(("Cache-Control", "no-store"))
        headers.append(("X-Content-Type-Options", "nosniff"))
        start_response(_STATUS_LINES[out.status], headers)
        return [body]


def _problem(start_response: Callable[..., Any], req: FastRequest, status: int, slug: str, detail: str,
             headers: tuple[tuple[str, str], ...] = ()) -> Iterable[bytes]:
    from .errors import PROBLEM_TYPES

    pt = PROBLEM_TYPES[slug]
    body = json_bytes({"type": pt.uri, "title": pt.title, "status": status, "detail": detail,
                       "instance": req.environ.get("PATH_INFO", ""), "request_id": req.request_id})
    start_response(f"{status} {HTTPStatus(status).phrase.upper()}", [
        ("Content-Type", "application/problem+json"), ("Content-Length", str(len(body))), *headers,
        ("X-Request-ID", req.request_id), ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
    ])
    return [body]


def install(app: Any, services: Services) -> None:
    """Wrap ``app.wsgi_app`` with the registered fast routes (if any, and if enabled)."""
    routes = app.extensions.get("csm_fast_routes") or []
    if routes and services.settings.fast_routes:
        app.wsgi_app = FastPath(app.wsgi_app, routes, services)
