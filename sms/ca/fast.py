"""A fast route (:mod:`sms.fastpath`) for the hottest CA call: signing a PEM or DER CSR
posted as ``application/pkcs10`` to ``/v1/ca/<ca>/sign?profile=<profile>``, answered with the
PEM certificate and intermediates, without Flask.

Through Flask, flask-smorest and werkzeug a signing pays about 0.4 ms of CPU before the view
runs, a quarter of its cost. The handler serves only the plain success case, exactly as
:func:`sms.ca.views.sign` answers it — same authorisation, same engine call, same body, status,
headers and audit entry (committed in the certificate's own transaction, as
:func:`sms.web.guard` arranges) — and *declines* everything else to Flask unchanged: another
content type, any other query parameter (``validity_days``, ``format``...), an ``Accept``
header other than ``*/*``, a body over the route's limit, no token or an unknown one, a denied
capability, and any error before the certificate was stored (a bad CSR, a profile violation,
an unknown CA or profile...), which Flask then answers with its problem document and audit
entry. Nothing is stored when it declines. ``Settings.fast_routes = false`` leaves it out.
"""
from __future__ import annotations

import re
from typing import Any, Final

from ca import IssueRequest
from ca.engine import MAX_CSR_BYTES

from ..auth.policy import Capability
from ..db import attach
from ..fastpath import FastRequest, FastResponse, fast_route
from .wiring import ca_engine

_NAME = r"[a-z0-9][a-z0-9._-]{0,62}"  # CA and profile names (ca.engine.CA_NAME, ca.profiles.PROFILE_NAME)
SIGN_PATH: Final = rf"/v1/ca/({_NAME})/sign"
_QUERY: Final = re.compile(rf"profile=({_NAME})")
_CSR_TYPES: Final = ("application/pkcs10",)
_PEM_CHAIN: Final = "application/pem-certificate-chain"
_MAX_BODY: Final = MAX_CSR_BYTES * 2  # the Flask route's body limit (and the app's max_body_bytes)


def sign(req: FastRequest) -> FastResponse | None:
    env = req.environ
    (ca_name,) = req.args
    q = _QUERY.fullmatch(env.get("QUERY_STRING", ""))
    if q is None or env.get("HTTP_ACCEPT", "*/*") != "*/*":
        return None
    profile = q.group(1)
    resource = f"ca/{ca_name}/sign/{profile}"
    ident = req.authenticate()
    if ident is None or not ident.can(resource, Capability.SIGN):
        return None
    body = req.read_body(min(_MAX_BODY, req.services.settings.max_body_bytes), _CSR_TYPES)
    if body is None:
        return None
    work = req.services.audit.attached(lambda: req.event("ca.sign", resource, 201, {}))
    with attach(work):
        issued = ca_engine(req.services).issue(IssueRequest(ca=ca_name, profile=profile, csr=body,
                                                            requester=ident.label))
    req.done = True
    serial = f"{issued.record.serial:x}"
    if not work.committed:  # pragma: no cover - the SQL store always carries it
        req.append_audit(req.event("ca.sign", resource, 201, {"serial": serial, "profile": profile}))
    return FastResponse(201, None, (("Location", f"/v1/ca/{ca_name}/certs/{serial}"), ("X-Certificate-Serial", serial)),
                        raw=issued.pem(include_root=False), content_type=_PEM_CHAIN)


def register(app: Any) -> None:
    fast_route(app, "POST", SIGN_PATH, sign, query=True)


__all__ = ["SIGN_PATH", "register", "sign"]
