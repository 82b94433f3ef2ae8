"""A fast route (see :mod:`sms.fastpath`) for CMP: ``POST /.well-known/cmp`` and
``POST /.well-known/cmp/p/<profile>`` answered without Flask.

Through Flask, werkzeug and the app's hooks a CMP exchange pays about half a millisecond of CPU
around the protocol work. The handler (registered with :func:`sms.fastpath.fast_route`) serves
only the plain case exactly as :func:`sms.cmp.views._serve` does - same CMP answer, status, headers
and audit entry (action ``cmp.<request type>``, resource ``cmp/<profile>``, identity
``cmp:<profile>:<senderKID or sender>``, the exchange's detail) - and *declines* everything
else to Flask unchanged, before anything happened: another content type, no or a too large
Content-Length, an empty or short body, an unknown profile, an unavailable CA (Flask answers
415/413/400/404/503 with its problem document and audit entry). CMP refusals are CMP answers
(200) here as there. The exchange's audit entry commits in the transaction of the exchange's
write (an ir's certificate with its CMP transaction row, a certConf's finish; as the CA sign
route's entry) when the answer is known by then, else it is appended afterwards as for a read.
An entry that cannot be added to the write fails that write (nothing is issued; a CMP
systemFailure answer, whose own entry is then appended); one that cannot be appended refuses the
exchange with a 503, as Flask's ``record_audit`` does. ``Settings.fast_routes = false`` leaves
it out.
"""
from __future__ import annotations

from typing import Any, Final

from ..audit.service import AuditEvent
from ..auth.service import Identity
from ..fastpath import FastRequest, FastResponse, fast_route
from .service import CmpReport
from .wiring import cmp_service

CONTENT_TYPE: Final = "application/pkixcmp"
CMP_PATH: Final = r"/\.well-known/cmp(?:/p/([^/]{1,64}))?"


def exchange(req: FastRequest) -> FastResponse | None:
    body = req.read_body(req.services.settings.cmp_max_body_bytes, (CONTENT_TYPE,))
    if body is None:
        return None
    svc = cmp_service(req.services)
    server = svc.server_for(req.args[0] or None)  # unknown profile, CA unavailable: raises, Flask answers
    req.done = True  # from here on the exchange may write: never declined

    def event(report: CmpReport) -> AuditEvent:
        who = report.sender_kid or report.sender or "unauthenticated"
        req.identity = Identity(kind="cmp", name=f"{report.profile}:{who}"[:200])
        return req.event(f"cmp.{report.request}"[:64], f"cmp/{report.profile}", 200, report.detail())

    # the entry commits with the exchange's write (an ir's certificate, a certConf's finish)
    # when it can; otherwise, or if the answer changed after that write, it is appended now
    der, report = svc.serve(server, body, audit=(req.services.audit, event))
    if not report.audited:
        req.append_audit(event(report))
    return FastResponse(200, None, (("Cache-Control", "no-store"),), raw=der, content_type=CONTENT_TYPE)


def register(app: Any) -> None:
    fast_route(app, "POST", CMP_PATH, exchange)


__all__ = ["CMP_PATH", "exchange", "register"]
