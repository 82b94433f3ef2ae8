"""Fast handlers (:mod:`sms.fastpath`) for the two hottest secrets routes: read the latest
version (``GET /v1/domains/<domain>/secrets/<name>``) and replace the values
(``PUT`` of the same path, optionally check-and-set with ``cas`` in the body).

Each serves the plain success case exactly as the Flask views in :mod:`.views` do — same
authorisation, same service calls, same body, headers and audit entry — and declines
everything else (a version query, ``If-Match``, client-certificate callers, any invalid input,
any error), which the Flask views then answer. A write's audit entry commits in the write's
transaction, as :func:`sms.web.guard` arranges; a failed write leaves nothing and is declined.
"""
from __future__ import annotations

import json
from typing import Any

from ..auth.policy import Capability
from ..db import attach
from ..fastpath import FastRequest, FastResponse, fast_route, json_bytes
from .store import WriteMode
from .views import iso, write_result
from .wiring import secrets_service

# Names as check_name accepts them (it still runs); anything else goes to Flask.
_SEG = r"([A-Za-z0-9][A-Za-z0-9_.-]{0,127})"
SECRET_PATH = rf"/v1/domains/{_SEG}/secrets/{_SEG}"
_WRITE_KEYS = frozenset(("values", "cas"))


def _authorised(req: FastRequest, capability: Capability) -> str | None:
    """The secret's policy path if the caller's token allows ``capability`` on it, else None.
    (The service checks the names before it touches anything; an invalid one is declined.)"""
    domain, name = req.args
    ident = req.authenticate()
    resource = f"secrets/{domain}/{name}"
    if ident is None or not ident.can(resource, capability):
        return None
    return resource


def read_latest(req: FastRequest) -> FastResponse | None:
    resource = _authorised(req, Capability.READ)
    if resource is None:
        return None
    domain, name = req.args
    meta, version, plaintext = secrets_service(req.services).read_plaintext(domain, name, None)
    head = {"domain": domain, "name": name, "version": version, "created_time": iso(meta.versions[0].created_at)}
    if plaintext.isascii():
        # The stored JSON is what the JSON provider would write for these values (compact,
        # ASCII, keys in stored order): put it in as it is instead of parsing and re-encoding.
        out = FastResponse(200, None, (("ETag", f'"{version}"'),),
                           raw=json_bytes(head)[:-2] + b',"values":' + plaintext + b"}\n")
    else:
        out = FastResponse(200, {**head, "values": json.loads(plaintext.decode())}, (("ETag", f'"{version}"'),))
    req.append_audit(req.event("secrets.read", resource, 200, {"version": version}))
    return out


def replace_values(req: FastRequest) -> FastResponse | None:
    if "HTTP_IF_MATCH" in req.environ:
        return None
    resource = _authorised(req, Capability.UPDATE)
    if resource is None:
        return None
    doc: Any = req.json_body(req.services.settings.max_body_bytes)
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), dict) or not doc.keys() <= _WRITE_KEYS:
        return None
    cas = doc.get("cas")
    if cas is not None and (type(cas) is not int or cas < 0):
        return None
    domain, name = req.args
    work = req.services.audit.attached(lambda: req.event("secrets.update", resource, 200, {}))
    with attach(work):
        m = secrets_service(req.services).write(domain, name, doc["values"], mode=WriteMode.UPDATE, cas=cas)
    req.done = True
    if not work.committed:  # a store outside the SQL database (Vault): the entry follows the write
        req.append_audit(req.event("secrets.update", resource, 200, {"version": m.current_version}))
    return FastResponse(200, write_result(m), (("ETag", f'"{m.current_version}"'),))


def register(app: Any) -> None:
    fast_route(app, "GET", SECRET_PATH, read_latest)
    fast_route(app, "PUT", SECRET_PATH, replace_values)
