"""A fast route (see :mod:`sms.fastpath`) for CMP: ``POST /.well-known/cmp`` and
``POST /.well-known/cmp/p/<profile>`` answered without Flask.

Through Flask, werkzeug and the app's hooks a CMP exchange pays about half a millisecond of CPU
around the protocol work. :class:`CmpFast` is a WSGI middleware in front of Flask (like
:class:`sms.ca.fast.SignFast`; :class:`sms.fastpath.FastPath` answers JSON only). It serves only
the plain case exactly as :func:`sms.cmp.views._serve` does - same CMP answer, status, headers
and audit entry (action ``cmp.<request type>``, resource ``cmp/<profile>``, identity
``cmp:<profile>:<senderKID or sender>``, the exchange's detail) - and *declines* everything
else to Flask unchanged, before anything happened: another content type, no or a too large
Content-Length, an empty or short body, an unknown profile, an unavailable CA (Flask answers
415/413/400/404/503 with its problem document and audit entry). CMP refusals are CMP answers
(200) here as there. An audit entry that cannot be written refuses the exchange with a 503, as
Flask's ``record_audit`` does. ``Settings.fast_routes = false`` leaves it out.
"""
from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from ..auth.service import Identity
from ..fastpath import AuditRefused, FastRequest, _problem
from ..runtime import Services
from .wiring import cmp_service

log = logging.getLogger("csm.fastpath")

CONTENT_TYPE: Final = "application/pkixcmp"
CMP_PATH: Final = re.compile(r"/\.well-known/cmp(?:/p/([^/]{1,64}))?")


class CmpFast:
    """WSGI middleware: plain CMP exchanges here, Flask for everything else."""

    def __init__(self, wsgi_app: Callable[..., Any], services: Services) -> None:
        self.wsgi_app = wsgi_app
        self.services = services
        self.served = 0  # statistics (tests, benchmarks); approximate under threads
        self.declined = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST" and not environ.get("QUERY_STRING"):
            m = CMP_PATH.fullmatch(environ.get("PATH_INFO", ""))
            if m is not None:
                return self._serve(m.group(1), environ, start_response)
        return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]

    def _serve(self, profile: str | None, environ: dict[str, Any],
               start_response: Callable[..., Any]) -> Iterable[bytes]:
        req = FastRequest(environ, self.services, (profile or "",))
        try:
            der = self._exchange(req, profile)
        except AuditRefused as exc:
            log.error("audit append failed for request %s: %s", req.request_id, type(exc.__cause__).__name__)
            return _problem(start_response, req, 503, "unavailable",
                            "the audit log cannot be written; request refused", (("Retry-After", "5"),))
        except Exception as exc:  # declined: Flask answers (and reports) it
            if req.done:  # the exchange ran: answering it again through Flask would repeat it
                log.error("request %s failed after its CMP exchange: %s", req.request_id, type(exc).__name__,
                          exc_info=exc)
                return _problem(start_response, req, 500, "internal", "an internal error occurred; it has been logged")
            log.debug("fast CMP route declined: %s", type(exc).__name__)
            der = None
        if der is None:
            self.declined += 1
            if req.body is not None:
                environ["wsgi.input"] = io.BytesIO(req.body)
            environ["HTTP_X_REQUEST_ID"] = req.request_id  # the same id in Flask's answer
            return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]
        self.served += 1
        start_response("200 OK", [
            ("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(der))), ("Cache-Control", "no-store"),
            ("X-Request-ID", req.request_id), ("X-Content-Type-Options", "nosniff"),
        ])
        return [der]

    def _exchange(self, req: FastRequest, profile: str | None) -> bytes | None:
        env = req.environ
        if env.get("CONTENT_TYPE") != CONTENT_TYPE:
            return None
        length = env.get("CONTENT_LENGTH", "")
        if not length.isdigit() or not 0 < int(length) <= req.services.settings.cmp_max_body_bytes:
            return None
        body = env["wsgi.input"].read(int(length))
        req.body = body
        if len(body) != int(length):
            return None
        svc = cmp_service(req.services)
        server = svc.server_for(profile)  # unknown profile, CA unavailable: raises, Flask answers
        req.done = True  # from here on the exchange may write: never declined
        der, report = svc.serve(server, body)
        who = report.sender_kid or report.sender or "unauthenticated"
        req.identity = Identity(kind="cmp", name=f"{report.profile}:{who}"[:200])
        ev = req.event(f"cmp.{report.request}"[:64], f"cmp/{report.profile}", 200, report.detail())
        req.append_audit(ev)
        return der


def install(app: Any) -> None:
    """Put :class:`CmpFast` in front of Flask (unless ``fast_routes`` is off)."""
    services: Services = app.extensions["csm"]
    if services.settings.fast_routes:
        app.wsgi_app = CmpFast(app.wsgi_app, services)


__all__ = ["CMP_PATH", "CmpFast", "install"]
