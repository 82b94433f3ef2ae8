"""Web-layer plumbing shared by every blueprint: problem documents, identity, authorisation, audit.

Flask lives here and in the ``views`` modules only.
"""
from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, current_app, g, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import LimitedStream

from .audit.service import AuditEvent
from .db import attach
from .auth.policy import Capability
from .auth.service import Identity
from .fastpath import new_request_id
from .errors import PROBLEM_TYPES, Unauthenticated, classify, problem_for_status
from .runtime import Services

log = logging.getLogger("csm.web")
F = TypeVar("F", bound=Callable[..., Any])

PROBLEM_JSON = "application/problem+json"
TOKEN_HEADER = "X-CSM-Token"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def services() -> Services:
    svc: Services = current_app.extensions["csm"]
    return svc


def problem_response(
    status: int, type_uri: str, title: str, detail: str, extensions: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"type": type_uri, "title": title, "status": status, "detail": detail}
    if request:
        body["instance"] = request.path
        body["request_id"] = current_request_id()
    for k, v in (extensions or {}).items():
        if k not in body:
            body[k] = v
    resp = current_app.json.response(body)
    resp.status_code = status
    resp.mimetype = PROBLEM_JSON
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _safe_errors(errors: Any) -> Any:
    """Validation messages from marshmallow/webargs (field names + fixed messages; no input echo)."""
    if isinstance(errors, dict):
        return {str(k)[:128]: _safe_errors(v) for k, v in list(errors.items())[:50]}
    if isinstance(errors, list):
        return [_safe_errors(v) for v in errors[:20]]
    return str(errors)[:300]


class ProblemApi(Api):
    """flask-smorest Api whose every error is an RFC 9457 problem document."""

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        status = error.code or 500
        data = getattr(error, "data", None) or {}
        headers = dict(data.get("headers") or {})
        if status == 422 or (status == 400 and ("messages" in data or "errors" in data)):
            errs = data.get("errors") or data.get("messages") or {}
            # webargs nests by location ("json", "query"); keep that, it tells the caller where.
            pt = PROBLEM_TYPES["validation"] if status == 422 else PROBLEM_TYPES["bad-request"]
            return problem_response(status, pt.uri, pt.title, data.get("message") or "the request is not valid",
                                    {"errors": _safe_errors(errs)}, headers)
        pt = problem_for_status(status)
        detail = data.get("message") or _DEFAULT_DETAIL.get(status) or (error.description or pt.title)
        if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return problem_response(status, pt.uri, pt.title, detail, None, headers)


_DEFAULT_DETAIL = {
    400: "the request could not be understood",
    404: "no such resource",
    405: "this method is not allowed on this resource",
    413: "the request body is larger than this service accepts",
    415: "unsupported content type",
    500: "an internal error occurred; it has been logged",
}


def handle_any_exception(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return ProblemApi.handle_http_exception(None, exc)  # type: ignore[arg-type]
    pt, detail, ext = classify(exc)
    headers: dict[str, str] = {}
    if pt.status >= 500:
        if pt.slug == "internal":
            log.error("request %s failed: %s", getattr(g, "request_id", "-"), type(exc).__name__, exc_info=exc)
        else:
            log.warning("request %s: %s (%s)", getattr(g, "request_id", "-"), pt.slug, type(exc).__name__)
        if pt.status == 503:
            headers["Retry-After"] = "5"
    if pt.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="csm"'
    return problem_response(pt.status, pt.uri, pt.title, detail, ext, headers)


# ---- identity -----------------------------------------------------------------------
IdentityResolver = Callable[[], Identity | None]


# Request headers as the WSGI environ keys them: reading the environ directly is what
# request.headers.get does, minus the KeyError it raises and catches for an absent header.
_ENV_TOKEN = "HTTP_" + TOKEN_HEADER.upper().replace("-", "_")


def presented_token() -> str | None:
    environ = request.environ
    tok = environ.get(_ENV_TOKEN)
    if tok:
        return str(tok).strip()
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


def current_identity(required: bool = True) -> Identity | None:
    """The caller's identity (token or client certificate), resolved once per request."""
    if "identity" in g:
        ident: Identity | None = g.identity
    else:
        ident = None
        svc = services()
        tok = presented_token()
        if tok:
            ident = svc.auth.authenticate(tok)
        else:
            for resolver in svc.extras.get("identity_resolvers", []):
                ident = resolver()
                if ident is not None:
                    break
        g.identity = ident
    if ident is None and required:
        raise Unauthenticated(f"present a token in the {TOKEN_HEADER} header (or Authorization: Bearer)")
    return ident


def guard(capability: Capability | None, path: str | Callable[..., str], *, action: str,
          audit: bool = True) -> Callable[[F], F]:
    """Authenticate, authorise ``capability`` on the resource path and record the outcome.

    ``path`` is a template formatted with the view's keyword arguments (e.g.
    ``"secrets/{domain}/{name}"``) or a callable receiving them. ``capability=None`` means
    any authenticated caller may proceed (self-service routes).
    """

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            resource = path(**kwargs) if callable(path) else path.format(**kwargs)
            if audit:
                g.audit = {"action": action, "resource": resource}
            ident = current_identity()
            assert ident is not None
            if capability is not None and not ident.can(resource, capability):
                from .errors import PermissionDenied

                raise PermissionDenied(f"{capability.value} on {resource} is not allowed for this caller")
            if any(isinstance(v, str) and "\x00" in v for v in kwargs.values()):
                from .errors import BadRequest

                raise BadRequest("the request path contains a NUL character")
            if not audit or request.method in _READ_METHODS:
                return fn(*args, **kwargs)
            # A mutating request: its audit entry commits with its write, or neither does.
            work = services().audit.attached(lambda: _audit_event(_success_status(), g.audit))
            g.audit_attached = work
            with attach(work):
                return fn(*args, **kwargs)

        if audit:  # for a request refused before the guard runs (see _refused_before_guard)
            wrapper._csm_audit = (action, path)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return deco


def _audit_text(text: str) -> str:
    """Request-derived text as every database stores it: NUL (refused by PostgreSQL) and lone
    surrogates (undecodable bytes) escaped."""
    if text.isascii() and "\x00" not in text:  # nothing to escape (the common case)
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


_READ_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


def _view_function() -> Any:
    """The function serving the current request (a MethodView's method), with the attributes
    its decorators copied outwards (``functools.wraps``)."""
    view = current_app.view_functions.get(request.endpoint or "")
    cls = getattr(view, "view_class", None)
    return getattr(cls, request.method.lower(), None) if cls is not None else view


def _success_status() -> int:
    """The success status the current route declares (flask-smorest ``@blp.response``)."""
    codes = getattr(_view_function(), "_apidoc", {}).get("success_status_codes") or [200]
    return int(codes[0])


def _refused_before_guard() -> dict[str, str] | None:
    """The audit target of a guarded route whose request was refused before its guard ran —
    its body or query did not parse or validate (400, 413, 415, 422): those refusals are
    audited like the others. The caller is identified if it can be; the resource falls back
    to the request path when the route's path needs the body."""
    meta = getattr(_view_function(), "_csm_audit", None) if request.endpoint else None
    if meta is None:
        return None
    action, path = meta
    try:
        resource = path(**(request.view_args or {})) if callable(path) else path.format(**(request.view_args or {}))
    except Exception:  # noqa: BLE001 - a path built from a body that did not parse
        resource = None
    if not isinstance(resource, str) or not resource:
        resource = request.path.lstrip("/")
    if "identity" not in g:
        try:
            current_identity(required=False)
        except Exception:  # noqa: BLE001 - an invalid token: recorded as anonymous
            g.identity = None
    return {"action": action, "resource": resource}


def _audit_event(status: int, pending: dict[str, str]) -> AuditEvent:
    """The audit entry of the current request, as if it answered ``status``."""
    ident: Identity | None = g.get("identity")
    outcome = "ok" if status < 400 else {401: "unauthenticated", 403: "denied"}.get(status, "error")
    return AuditEvent(
        actor=ident.label if ident else "anonymous",
        action=_audit_text(pending["action"]),
        resource=_audit_text(pending["resource"]),
        outcome=outcome,
        status=status,
        request_id=current_request_id(),
        remote=request.remote_addr or "",
        detail={"method": request.method, **(g.get("audit_detail") or {})},
    )


def _recorded(entry: AuditEvent | None, ev: AuditEvent) -> bool:
    """Whether the entry committed with the write already says all that ``ev`` says."""
    if entry is None or entry.status != ev.status:
        return False
    recorded = entry.detail or {}
    return all(recorded.get(k) == v for k, v in (ev.detail or {}).items())


def record_audit(response: Response) -> Response:
    """after_request: write the audit entry for guarded requests; fail closed if it cannot.

    A mutating request whose write committed already has its entry (written in the write's
    transaction, with the route's success status): nothing more is written unless the response
    or the detail the view set after its write differ from it, which then get an entry of their
    own."""
    pending = g.pop("audit", None)
    if pending is None and (response.status_code < 400 or (pending := _refused_before_guard()) is None):
        return response
    work = g.pop("audit_attached", None)
    ev = _audit_event(response.status_code, pending)
    if work is not None and work.committed and _recorded(work.record, ev):
        return response
    try:
        services().audit.append(ev)
    except Exception as exc:  # noqa: BLE001 - any failure must turn into a refusal
        log.error("audit append failed for request %s: %s", ev.request_id, type(exc).__name__)
        pt = PROBLEM_TYPES["unavailable"]
        return problem_response(503, pt.uri, pt.title, "the audit log cannot be written; request refused",
                                None, {"Retry-After": "5"})
    return response


def buffered_body(app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI middleware: hand the server each response body as a one-element list.

    Flask returns a closing iterator, which granian drains through a Python wrapper chunk by
    chunk; a list takes its single-copy fast path. csm's responses are built in memory anyway
    (no streaming), so nothing is held longer than before."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        it = app(environ, start_response)
        if isinstance(it, list):
            return it
        try:
            return [b"".join(it)]
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    return wsgi


def assign_request_id() -> None:
    rid = str(request.environ.get("HTTP_X_REQUEST_ID", ""))
    g.request_id = rid if _REQUEST_ID_RE.match(rid) else new_request_id()


def current_request_id() -> str:
    """This request's id: assigned by the before_request hook, or here for a request refused
    before the hooks ran (a body over the size limit)."""
    if "request_id" not in g:
        assign_request_id()
    return str(g.request_id)


def add_common_headers(response: Response) -> Response:
    response.headers["X-Request-ID"] = current_request_id()
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


#: Most of a refused request's unread body that is read (and dropped) before the answer goes out.
DRAIN_LIMIT = 16 << 20


class DrainRefusedBody:
    """WSGI middleware: after an error answer (status >= 400), read and drop what the client is
    still sending of its body (at most :data:`DRAIN_LIMIT`), before the answer leaves.

    A refusal that comes before the body was read (413 over the size limit, 401, 415, ...)
    would otherwise be answered while the client is still sending; over HTTP/2 the server then
    resets the stream, and depending on timing the client sees a stream error instead of the
    problem document (curl: "(92) Stream error in the HTTP/2 framing layer"). Never past the
    body: with a Content-Length the input is counted (PEP 3333: a server need not end the
    stream there - werkzeug's development server does not), without one only a server that
    says it ends the stream (``wsgi.input_terminated``, as granian) is read to its end. A body
    declared larger than the limit is left alone: that client learns of its refusal the hard way."""

    def __init__(self, wsgi_app: Callable[..., Any]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        stream = _countable_input(environ)
        if stream is None:
            return self.wsgi_app(environ, start_response)
        status: list[str] = []

        def note(st: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(st)
            return start_response(st, headers, exc_info)

        out = self.wsgi_app(environ, note)
        if status and status[-1][:1] in "45":
            _drop_rest(stream)
        return out


def _countable_input(environ: dict[str, Any]) -> Any:
    """The request body as a stream that ends where the body ends (installed in ``environ``
    when it had to be wrapped for that), or None when there is no body to drain or it is not
    known where it ends."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return None
    length = environ.get("CONTENT_LENGTH") or ""
    if length:
        if not length.isdigit() or not 0 < int(length) <= DRAIN_LIMIT:
            return None
        stream = environ["wsgi.input"] = LimitedStream(stream, int(length))
        return stream
    if environ.get("REQUEST_METHOD") in ("GET", "HEAD", "OPTIONS") or not environ.get("wsgi.input_terminated"):
        return None
    return stream  # the server ends it: read at most DRAIN_LIMIT of it


def _drop_rest(stream: Any) -> None:
    dropped = 0
    try:
        while dropped < DRAIN_LIMIT:
            chunk = stream.read(min(65536, DRAIN_LIMIT - dropped))
            if not chunk:
                break
            dropped += len(chunk)
    except Exception:  # noqa: BLE001 - a client gone meanwhile: the answer goes out all the same
        pass
