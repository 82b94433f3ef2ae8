"""A fast route (see :mod:`sms.fastpath`) for the hottest CA call: signing a PEM or DER CSR
posted as ``application/pkcs10`` to ``/v1/ca/<ca>/sign?profile=<profile>``, answered with the
PEM certificate and intermediates, without Flask.

Through Flask, flask-smorest and werkzeug a signing pays about 0.4 ms of CPU before the view
runs, a quarter of its cost. :class:`SignFast` is a WSGI middleware in front of Flask (inside
:class:`sms.fastpath.FastPath`, which hands it every request it does not serve; that one
serves no query strings and JSON bodies only, so the CA route lives here). It serves only the
plain success case, exactly as :func:`sms.ca.views.sign` answers it — same authorisation, same
engine call, same body, status, headers and audit entry (committed in the certificate's own
transaction, as :func:`sms.web.guard` arranges) — and *declines* everything else to Flask
unchanged: another content type, any other query parameter (``validity_days``, ``format``...),
an ``Accept`` header other than ``*/*``, a body over the route's limit, no token or an unknown
one, a denied capability, and any error before the certificate was stored (a bad CSR, a
profile violation, an unknown CA or profile...), which Flask then answers with its problem
document and audit entry. Nothing is stored when it declines. ``Settings.fast_routes = false``
leaves it out.
"""
from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from ca import IssueRequest
from ca.engine import MAX_CSR_BYTES

from ..auth.policy import Capability
from ..db import attach
from ..fastpath import AuditRefused, FastRequest, _problem
from ..runtime import Services
from .wiring import ca_engine

log = logging.getLogger("csm.fastpath")

_NAME = r"[a-z0-9][a-z0-9._-]{0,62}"  # CA and profile names (ca.engine.CA_NAME, ca.profiles.PROFILE_NAME)
SIGN_PATH: Final = re.compile(rf"/v1/ca/({_NAME})/sign")
_QUERY: Final = re.compile(rf"profile=({_NAME})")
_CSR_TYPE: Final = "application/pkcs10"
_PEM_CHAIN: Final = "application/pem-certificate-chain"
_MAX_BODY: Final = MAX_CSR_BYTES * 2  # the Flask route's body limit (and the app's max_body_bytes)


class SignFast:
    """WSGI middleware: the plain success case of a CSR signing, Flask for everything else."""

    def __init__(self, wsgi_app: Callable[..., Any], services: Services) -> None:
        self.wsgi_app = wsgi_app
        self.services = services
        self.served = 0  # statistics (tests, benchmarks); approximate under threads
        self.declined = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST":
            m = SIGN_PATH.fullmatch(environ.get("PATH_INFO", ""))
            if m is not None:
                return self._serve(m.group(1), environ, start_response)
        return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]

    def _serve(self, ca_name: str, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        req = FastRequest(environ, self.services, (ca_name,))
        try:
            out = self._sign(req, ca_name)
        except AuditRefused as exc:
            log.error("audit append failed for request %s: %s", req.request_id, type(exc.__cause__).__name__)
            return _problem(start_response, req, 503, "unavailable",
                            "the audit log cannot be written; request refused", (("Retry-After", "5"),))
        except Exception as exc:  # declined: Flask answers (and reports) it
            if req.done:  # the certificate is stored: answering through Flask would issue another
                log.error("request %s failed after its write: %s", req.request_id, type(exc).__name__, exc_info=exc)
                return _problem(start_response, req, 500, "internal", "an internal error occurred; it has been logged")
            log.debug("fast CA sign declined: %s", type(exc).__name__)
            out = None
        if out is None:
            self.declined += 1
            if req.body is not None:
                environ["wsgi.input"] = io.BytesIO(req.body)
            environ["HTTP_X_REQUEST_ID"] = req.request_id  # the same id in Flask's answer
            return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]
        self.served += 1
        body, serial = out
        start_response("201 CREATED", [
            ("Content-Type", _PEM_CHAIN), ("Content-Length", str(len(body))),
            ("Location", f"/v1/ca/{ca_name}/certs/{serial:x}"), ("X-Certificate-Serial", f"{serial:x}"),
            ("X-Request-ID", req.request_id), ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
        ])
        return [body]

    def _sign(self, req: FastRequest, ca_name: str) -> tuple[bytes, int] | None:
        env = req.environ
        q = _QUERY.fullmatch(env.get("QUERY_STRING", ""))
        if q is None or env.get("CONTENT_TYPE") != _CSR_TYPE or env.get("HTTP_ACCEPT", "*/*") != "*/*":
            return None
        length = env.get("CONTENT_LENGTH", "")
        if not length.isdigit() or not 0 < int(length) <= min(_MAX_BODY, req.services.settings.max_body_bytes):
            return None
        profile = q.group(1)
        resource = f"ca/{ca_name}/sign/{profile}"
        ident = req.authenticate()
        if ident is None or not ident.can(resource, Capability.SIGN):
            return None
        body = env["wsgi.input"].read(int(length))
        req.body = body
        if len(body) != int(length):
            return None
        work = req.services.audit.attached(lambda: req.event("ca.sign", resource, 201, {}))
        with attach(work):
            issued = ca_engine(req.services).issue(IssueRequest(ca=ca_name, profile=profile, csr=body,
                                                                requester=ident.label))
        req.done = True
        if not work.committed:  # pragma: no cover - the SQL store always carries it
            req.append_audit(req.event("ca.sign", resource, 201, {"serial": f"{issued.record.serial:x}",
                                                                  "profile": profile}))
        return issued.pem(include_root=False), issued.record.serial


def install(app: Any) -> None:
    """Put :class:`SignFast` in front of Flask (unless ``fast_routes`` is off)."""
    services: Services = app.extensions["csm"]
    if services.settings.fast_routes:
        app.wsgi_app = SignFast(app.wsgi_app, services)


__all__ = ["SIGN_PATH", "SignFast", "install"]
