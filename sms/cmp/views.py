"""HTTP front of the CMP feature.

* ``wellknown``: RFC 6712 transport. ``POST /.well-known/cmp`` (the default profile) and
  ``POST /.well-known/cmp/p/<profile>``, body ``application/pkixcmp``, answer ``200`` with a
  DER PKIMessage (errors included, as CMP ``error`` messages). HTTP-level problems are problem
  documents: 415 wrong content type, 413 body over ``cmp_max_body_bytes``, 400 empty body, 404
  unknown profile, 405 other methods, 503 the CA is unavailable. Not token-authenticated (CMP
  protection is the authentication) but every exchange is audited: profile, message types,
  transactionID, sender and senderKID, outcome; never a secret or a message body.
* ``blp``: management under ``/v1/cmp``. Policy paths: ``cmp/profiles`` (list),
  ``cmp/profiles/<name>`` (create, read, update, delete), ``cmp/requests`` (list),
  ``cmp/requests/<profile>`` (``sign`` approves a held request, ``update`` rejects it),
  ``sys/cmp`` (``sudo``: run the confirm-timeout sweep now).
"""
from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from flask import Response, g, request
from flask.views import MethodView
from flask_smorest import Blueprint

from ..auth.policy import Capability
from ..auth.service import Identity
from ..errors import BadRequest, CsmError
from ..web import guard, services
from . import schemas as sch
from .errors import CmpProfileNotFound
from .service import CmpService, describe
from .store import OPTIONS, CmpProfile, RequestProtection, ResponseProtection, anchors_pem, parse_trust_anchors
from .wiring import cmp_service

CONTENT_TYPE = "application/pkixcmp"

wellknown = Blueprint("cmp", __name__, description="CMPv2 over HTTP (RFC 6712); CMP protection authenticates")
blp = Blueprint("cmp-admin", __name__, url_prefix="/v1/cmp", description="CMP profiles and held CMP requests")


class PayloadTooLarge(CsmError):
    problem = "payload-too-large"


class UnsupportedMediaType(CsmError):
    problem = "unsupported-media-type"


def svc() -> CmpService:
    return cmp_service(services())


# ---- RFC 6712 transport ---------------------------------------------------------------------------

def _serve(profile: str | None) -> Response:
    g.audit = {"action": "cmp.request", "resource": f"cmp/{profile or 'default'}"[:1024]}
    if request.mimetype != CONTENT_TYPE:
        raise UnsupportedMediaType(f"CMP messages are POSTed as {CONTENT_TYPE}")
    limit = services().settings.cmp_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"a CMP message is at most {limit} bytes here")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"a CMP message is at most {limit} bytes here")
    if not data:
        raise BadRequest("empty body: POST one DER-encoded PKIMessage")
    der, report = svc().handle(profile, data)
    g.audit = {"action": f"cmp.{report.request}"[:64], "resource": f"cmp/{report.profile}"}
    g.audit_detail = report.detail()
    who = report.sender_kid or report.sender or "unauthenticated"
    g.identity = Identity(kind="cmp", name=f"{report.profile}:{who}"[:200])
    resp = Response(der, 200, mimetype=CONTENT_TYPE)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@wellknown.route("/.well-known/cmp", methods=["POST"])
def cmp_default() -> Response:
    """CMP request to the default profile (RFC 6712; body: DER PKIMessage)."""
    return _serve(None)


@wellknown.route("/.well-known/cmp/p/<string:profile>", methods=["POST"])
def cmp_profile(profile: str) -> Response:
    """CMP request to a named profile (RFC 9483 §3.3 path form)."""
    if len(profile) > 64:
        raise CmpProfileNotFound(profile[:64])
    return _serve(profile)


@wellknown.record_once
def _on_register(state: Any) -> None:
    from . import fast

    fast.register(state.app)


# ---- management -------------------------------------------------------------------------------------

def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def profile_json(p: CmpProfile) -> dict[str, Any]:
    return {
        "name": p.name, "ca": p.ca, "cert_profile": p.cert_profile, "default": p.default,
        "url_path": f"/.well-known/cmp/p/{p.name}", "request_protection": p.request_protection.value,
        "response_protection": p.response_protection.value, "secret_references": list(p.secret_references),
        "trust_anchors": [{"subject": c.subject.rfc4514_string(),
                           "sha256": hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest(),
                           "not_after": c.not_valid_after_utc.isoformat()} for c in p.trust_anchors],
        "trust_anchors_pem": anchors_pem(p.trust_anchors), "created_time": _iso(p.created_at),
        "updated_time": _iso(p.updated_at), "version": p.version,
        **{k: getattr(p, k) for k in OPTIONS},
    }


def _changes(body: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in ("secrets", "remove_secrets", "name")}
    if "trust_anchors" in out:
        out["trust_anchors"] = parse_trust_anchors(out["trust_anchors"])
    if "request_protection" in out:
        out["request_protection"] = RequestProtection(out["request_protection"])
    if "response_protection" in out:
        out["response_protection"] = ResponseProtection(out["response_protection"])
    return out


def _body_name(**_kw: Any) -> str:
    doc = request.get_json(silent=True)
    name = doc.get("name") if isinstance(doc, dict) else None
    return "cmp/profiles/" + (name if isinstance(name, str) and sch._NAME.regex.match(name) else "~invalid~")


def _p_path(name: str, **_kw: Any) -> str:
    return "cmp/profiles/" + (name if sch._NAME.regex.match(name) else "~invalid~")


def _r_path(profile: str, **_kw: Any) -> str:
    return "cmp/requests/" + (profile if sch._NAME.regex.match(profile) else "~invalid~")


@blp.route("/profiles")
class Profiles(MethodView):
    @blp.response(200, sch.ProfileListSchema)
    @guard(Capability.LIST, "cmp/profiles", action="cmp.profile.list")
    def get(self) -> dict[str, Any]:
        """List CMP profiles (shared secrets are never returned, only their references)."""
        return {"profiles": [profile_json(p) for p in svc().profiles.list()]}

    @blp.arguments(sch.ProfileCreateSchema)
    @blp.response(201, sch.ProfileSchema)
    @guard(Capability.CREATE, _body_name, action="cmp.profile.create")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a CMP profile: URL path → CA and certificate profile, protection, secrets, anchors."""
        changes = _changes(body)
        profile = CmpProfile(name=body["name"], **changes)
        secrets = body.get("secrets") or {}
        g.audit_detail = {"secret_references": sorted(secrets)}
        return profile_json(svc().create_profile(profile, secrets))


@blp.route("/profiles/<string:name>")
class Profile(MethodView):
    @blp.response(200, sch.ProfileSchema)
    @guard(Capability.READ, _p_path, action="cmp.profile.read")
    def get(self, name: str) -> dict[str, Any]:
        """Read a CMP profile."""
        return profile_json(svc().profiles.get(name))

    @blp.arguments(sch.ProfileUpdateSchema)
    @blp.response(200, sch.ProfileSchema)
    @guard(Capability.UPDATE, _p_path, action="cmp.profile.update")
    def patch(self, body: dict[str, Any], name: str) -> dict[str, Any]:
        """Change options; ``secrets`` adds or replaces shared secrets, ``remove_secrets`` drops them.
        ``If-Match: "<version>"`` makes it conditional (409 if stale)."""
        expected = None
        if (tag := request.headers.get("If-Match")) is not None:
            t = tag.strip().removeprefix("W/").strip('"')
            if not t.isdigit() or len(t) > 10:
                raise BadRequest('If-Match must carry a profile version, e.g. If-Match: "3"')
            expected = int(t)
        secrets = body.get("secrets") or {}
        g.audit_detail = {"secret_references": sorted(secrets), "removed": sorted(body.get("remove_secrets") or [])}
        return profile_json(svc().update_profile(name, _changes(body), set_secrets=secrets,
                                                 remove_secrets=body.get("remove_secrets") or (),
                                                 expected_version=expected))

    @blp.response(204)
    @guard(Capability.DELETE, _p_path, action="cmp.profile.delete")
    def delete(self, name: str) -> None:
        """Delete a CMP profile with its secrets and transactions (issued certificates stay)."""
        svc().delete_profile(name)


@blp.route("/requests")
class Requests(MethodView):
    @blp.arguments(sch.RequestsQuery, location="query")
    @blp.response(200, sch.RequestListSchema)
    @guard(Capability.LIST, "cmp/requests", action="cmp.request.list")
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Requests held for approval (profiles with ``approval_required``)."""
        return {"requests": [describe(t) for t in svc().pending(query["profile"], limit=query["limit"])]}


@blp.route("/requests/<string:profile>/<string:transaction_id>/approve")
class Approve(MethodView):
    @blp.response(200, sch.RequestSchema)
    @guard(Capability.SIGN, _r_path, action="cmp.request.approve")
    def post(self, profile: str, transaction_id: str) -> dict[str, Any]:
        """Approve a held request: the certificate is issued when the client polls next."""
        from ..web import current_identity

        ident = current_identity()
        g.audit_detail = {"transaction_id": transaction_id[:64]}
        return describe(svc().approve(profile, transaction_id, by=ident.label if ident else ""))


@blp.route("/requests/<string:profile>/<string:transaction_id>/reject")
class Reject(MethodView):
    @blp.arguments(sch.RejectSchema)
    @blp.response(200, sch.RequestSchema)
    @guard(Capability.UPDATE, _r_path, action="cmp.request.reject")
    def post(self, body: dict[str, Any], profile: str, transaction_id: str) -> dict[str, Any]:
        """Reject a held request; the client's next poll gets a rejection (notAuthorized)."""
        g.audit_detail = {"transaction_id": transaction_id[:64]}
        return describe(svc().reject(profile, transaction_id, reason=body["reason"]))


@blp.route("/sweep")
class Sweep(MethodView):
    @blp.response(200, sch.SweepSchema)
    @guard(Capability.SUDO, "sys/cmp", action="cmp.sweep")
    def post(self) -> dict[str, Any]:
        """Revoke certificates not confirmed within their profile's timeout; purge old transactions."""
        r = svc().sweep()
        return {"revoked": r.revoked, "purged": r.purged}
