"""Native REST API of the secrets feature (/v1/domains, /v1/references, /v1/sys/secrets).

Policy paths: ``secrets`` (list domains), ``secrets/<domain>`` (domain: create, read,
update, delete, list its secrets; ``sudo`` rotates its key), ``secrets/<domain>/<name>``
(create, read, update, delete; ``read`` also mints one-time references), ``sys/secrets``
(``sudo``: master key rotation, rewrap, export, restore).
"""
from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from typing import Any

from flask import Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from ..auth.policy import Capability
from ..auth.service import Identity
from ..errors import BadRequest
from ..web import current_identity, guard, services
from . import schemas as sch
from .errors import InvalidName, InvalidValues
from .limits import check_name
from .service import SecretsService
from .store import DomainRecord, SecretMeta, WriteMode
from .wiring import secrets_service

blp = Blueprint("secrets", __name__, url_prefix="/v1", description="Secrets: domains of versioned key/value secrets")

INVALID = "~invalid~"


def seg(name: Any, kind: str = "secret") -> str:
    """A name as it may appear in a policy path and the audit log (invalid names never do)."""
    try:
        return check_name(name, kind=kind)
    except InvalidName:
        return INVALID


def S_DOMAIN(domain: str, **_kw: Any) -> str:  # noqa: N802 - used like the path templates it replaces
    return "secrets/" + seg(domain, "domain")


def S_SECRET(domain: str, name: str, **_kw: Any) -> str:  # noqa: N802
    return f"secrets/{seg(domain, 'domain')}/{seg(name)}"


def body_name() -> Any:
    doc = request.get_json(silent=True)
    return doc.get("name") if isinstance(doc, dict) else None


@functools.lru_cache(maxsize=8192)
def iso(ts: float | None) -> str | None:
    """A stored time as RFC 3339 UTC with microseconds (cached: the same versions are read again and again)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def svc() -> SecretsService:
    return secrets_service(services())


def domain_json(rec: DomainRecord, secrets: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": rec.id, "name": rec.name, "created_time": iso(rec.created_at),
                           "updated_time": iso(rec.updated_at), "key_version": rec.key_version,
                           "max_versions": rec.max_versions}
    if secrets is not None:
        out["secrets"] = secrets
    return out


def meta_json(m: SecretMeta, effective_max: int) -> dict[str, Any]:
    return {
        "domain": m.domain, "name": m.name, "created_time": iso(m.created_at), "updated_time": iso(m.updated_at),
        "current_version": m.current_version,
        "oldest_version": m.versions[0].version if m.versions else 0,
        "versions_kept": len(m.versions),
        "max_versions": effective_max, "max_versions_configured": m.max_versions,
        "versions": [{"version": v.version, "created_time": iso(v.created_at), "deletion_time": iso(v.deleted_at),
                      "destroyed": v.destroyed} for v in m.versions],
    }


def _effective_max(s: SecretsService, m: SecretMeta) -> int:
    if m.max_versions:
        return m.max_versions
    dom = s.get_domain(m.domain)
    return dom.max_versions or s.default_max_versions


def write_result(m: SecretMeta) -> dict[str, Any]:
    return {"domain": m.domain, "name": m.name, "version": m.current_version,
            "created_time": iso(m.versions[-1].created_at if m.versions else m.updated_at)}


def if_match_cas(body_cas: int | None) -> int | None:
    """``cas`` in the body, or the version in an ``If-Match: "<n>"`` header."""
    header = request.headers.get("If-Match")
    if header is None:
        return body_cas
    tag = header.strip().removeprefix("W/").strip('"')
    if not tag.isdigit() or len(tag) > 10:
        raise BadRequest('If-Match must carry a version number, e.g. If-Match: "3"')
    if body_cas is not None and body_cas != int(tag):
        raise BadRequest("cas and If-Match disagree")
    return int(tag)


def version_arg() -> int | None:
    """``?version=n`` (n >= 1) or None; anything else is a 422 like a schema would give."""
    if not request.environ.get("QUERY_STRING"):  # no query: skip parsing one (the hot path)
        return None
    raw = request.args.get("version")
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10:
        abort(422, messages={"query": {"version": ["Not a valid integer."]}})
    n = int(raw)
    if n < 1:
        abort(422, messages={"query": {"version": ["Must be greater than or equal to 1."]}})
    return n


def _etag(resp: Response, version: int) -> Response:
    resp.headers["ETag"] = f'"{version}"'
    return resp


# ---- domains -----------------------------------------------------------------------
@blp.route("/domains")
class Domains(MethodView):
    @blp.response(200, sch.DomainListSchema)
    @guard(Capability.LIST, "secrets", action="secrets.domain.list")
    def get(self) -> dict[str, Any]:
        """List domains."""
        return {"domains": [domain_json(d) for d in svc().list_domains()]}

    @blp.arguments(sch.DomainCreateSchema)
    @blp.response(201, sch.DomainSchema)
    @guard(Capability.CREATE, lambda **kw: "secrets/" + seg(body_name(), "domain"), action="secrets.domain.create")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a domain (the unit of policy; it gets its own data key in the token)."""
        return domain_json(svc().create_domain(body["name"], max_versions=body["max_versions"]), 0)


@blp.route("/domains/<string:domain>")
class Domain(MethodView):
    @blp.response(200, sch.DomainSchema)
    @guard(Capability.READ, S_DOMAIN, action="secrets.domain.read")
    def get(self, domain: str) -> dict[str, Any]:
        """Read a domain: identity, key version, version limit, number of secrets."""
        s = svc()
        return domain_json(s.get_domain(domain), s.count_secrets(domain))

    @blp.arguments(sch.DomainConfigSchema)
    @blp.response(200, sch.DomainSchema)
    @guard(Capability.UPDATE, S_DOMAIN, action="secrets.domain.configure")
    def patch(self, body: dict[str, Any], domain: str) -> dict[str, Any]:
        """Configure a domain: the default maximum number of versions its secrets keep."""
        return domain_json(svc().configure_domain(domain, max_versions=body["max_versions"]))

    @blp.arguments(sch.DomainDeleteQuery, location="query")
    @blp.response(204)
    @guard(Capability.DELETE, S_DOMAIN, action="secrets.domain.delete")
    def delete(self, query: dict[str, Any], domain: str) -> None:
        """Delete a domain; refused (409) while it holds secrets unless ``force=true``."""
        g.audit_detail = {"force": bool(query["force"])}
        svc().delete_domain(domain, force=query["force"])


@blp.route("/domains/<string:domain>/rotate")
class DomainRotate(MethodView):
    @blp.response(200, sch.DomainSchema)
    @guard(Capability.SUDO, S_DOMAIN, action="secrets.domain.rotate")
    def post(self, domain: str) -> dict[str, Any]:
        """Rotate the domain's data key: new writes use the new version, older ones stay readable."""
        return domain_json(svc().rotate_domain_key(domain))


# ---- secrets -----------------------------------------------------------------------
@blp.route("/domains/<string:domain>/secrets")
class Secrets(MethodView):
    @blp.response(200, sch.SecretNamesSchema)
    @guard(Capability.LIST, S_DOMAIN, action="secrets.list")
    def get(self, domain: str) -> dict[str, Any]:
        """List the names of the domain's secrets."""
        return {"names": svc().list_secrets(domain)}

    @blp.arguments(sch.SecretCreateSchema)
    @blp.response(201, sch.WriteResultSchema)
    @guard(Capability.CREATE, lambda domain: S_SECRET(domain, body_name()), action="secrets.create")
    def post(self, body: dict[str, Any], domain: str) -> Any:
        """Create a secret (version 1); 409 if it exists."""
        m = svc().write(domain, body["name"], body["values"], mode=WriteMode.CREATE)
        return _etag(current_app.json.response(write_result(m)), m.current_version), 201


@blp.route("/domains/<string:domain>/secrets/<string:name>")
class Secret(MethodView):
    @blp.doc(parameters=[{"in": "query", "name": "version", "required": False,
                          "schema": {"type": "integer", "minimum": 1}}])
    @blp.response(200, sch.SecretSchema)
    @guard(Capability.READ, S_SECRET, action="secrets.read")
    def get(self, domain: str, name: str) -> Any:
        """Read the latest version, or ``?version=n``."""
        # Parsed by hand rather than through a query schema: this is the hottest route.
        v = svc().read(domain, name, version_arg())
        g.audit_detail = {"version": v.version}
        body = {"domain": domain, "name": name, "version": v.version,
                "created_time": iso(v.meta.versions[0].created_at), "values": v.values}
        return _etag(current_app.json.response(body), v.version)

    @blp.arguments(sch.SecretWriteSchema)
    @blp.response(200, sch.WriteResultSchema)
    @guard(Capability.UPDATE, S_SECRET, action="secrets.update")
    def put(self, body: dict[str, Any], domain: str, name: str) -> Any:
        """Replace the values (new version). ``cas`` or ``If-Match`` makes it check-and-set (409 if stale)."""
        m = svc().write(domain, name, body["values"], mode=WriteMode.UPDATE, cas=if_match_cas(body["cas"]))
        g.audit_detail = {"version": m.current_version}
        return _etag(current_app.json.response(write_result(m)), m.current_version)

    @blp.arguments(sch.SecretPatchSchema)
    @blp.response(200, sch.WriteResultSchema)
    @guard(Capability.UPDATE, S_SECRET, action="secrets.patch")
    def patch(self, body: dict[str, Any], domain: str, name: str) -> Any:
        """Merge-patch the latest values (null removes a key) into a new version."""
        m = svc().patch(domain, name, body["values"], cas=if_match_cas(body["cas"]))
        g.audit_detail = {"version": m.current_version}
        return _etag(current_app.json.response(write_result(m)), m.current_version)

    @blp.arguments(sch.VersionsQuery, location="query")
    @blp.response(204)
    @guard(Capability.DELETE, S_SECRET, action="secrets.delete")
    def delete(self, query: dict[str, Any], domain: str, name: str) -> None:
        """Soft-delete the latest version (or ``?versions=1,2``); undelete restores them."""
        svc().delete(domain, name, query.get("versions"))


@blp.route("/domains/<string:domain>/secrets/<string:name>/metadata")
class SecretMetadata(MethodView):
    @blp.response(200, sch.SecretMetaSchema)
    @guard(Capability.READ, S_SECRET, action="secrets.metadata.read")
    def get(self, domain: str, name: str) -> dict[str, Any]:
        """Metadata: created/updated times, current version, versions kept and their states."""
        s = svc()
        m = s.metadata(domain, name)
        return meta_json(m, _effective_max(s, m))

    @blp.arguments(sch.SecretConfigSchema)
    @blp.response(200, sch.SecretMetaSchema)
    @guard(Capability.UPDATE, S_SECRET, action="secrets.metadata.write")
    def put(self, body: dict[str, Any], domain: str, name: str) -> dict[str, Any]:
        """Set the maximum number of versions kept (null = the domain's or the service's default)."""
        s = svc()
        m = s.configure_secret(domain, name, max_versions=body["max_versions"])
        return meta_json(m, _effective_max(s, m))

    @blp.response(204)
    @guard(Capability.DELETE, S_SECRET, action="secrets.purge")
    def delete(self, domain: str, name: str) -> None:
        """Remove the secret entirely: every version (destroyed) and its metadata."""
        svc().purge(domain, name)


@blp.route("/domains/<string:domain>/secrets/<string:name>/undelete")
class SecretUndelete(MethodView):
    @blp.arguments(sch.VersionsSchema)
    @blp.response(200, sch.SecretMetaSchema)
    @guard(Capability.DELETE, S_SECRET, action="secrets.undelete")
    def post(self, body: dict[str, Any], domain: str, name: str) -> dict[str, Any]:
        """Undelete soft-deleted versions."""
        s = svc()
        m = s.undelete(domain, name, body["versions"])
        return meta_json(m, _effective_max(s, m))


@blp.route("/domains/<string:domain>/secrets/<string:name>/destroy")
class SecretDestroy(MethodView):
    @blp.arguments(sch.VersionsSchema)
    @blp.response(200, sch.SecretMetaSchema)
    @guard(Capability.DELETE, S_SECRET, action="secrets.destroy")
    def post(self, body: dict[str, Any], domain: str, name: str) -> dict[str, Any]:
        """Destroy versions: their ciphertexts are erased for good."""
        s = svc()
        m = s.destroy(domain, name, body["versions"])
        return meta_json(m, _effective_max(s, m))


@blp.route("/domains/<string:domain>/secrets/<string:name>/references")
class SecretReferences(MethodView):
    @blp.arguments(sch.ReferenceCreateSchema)
    @blp.response(201, sch.ReferenceSchema)
    @guard(Capability.READ, S_SECRET, action="secrets.reference.create")
    def post(self, body: dict[str, Any], domain: str, name: str) -> dict[str, Any]:
        """Mint a one-time reference: whoever holds it may fetch this secret once, before it expires."""
        ident = current_identity()
        assert ident is not None
        ref = svc().mint_reference(domain, name, version=body["version"], ttl=body["ttl"], created_by=ident.label)
        g.audit_detail = {"version": ref.version, "expires_at": int(ref.expires_at)}
        return {"reference": ref.reference, "domain": domain, "name": name, "version": ref.version,
                "expires_time": iso(ref.expires_at), "ttl": int(round(ref.expires_at - _now()))}


def _now() -> float:
    import time

    return time.time()


@blp.route("/references/redeem")
class RedeemReference(MethodView):
    @blp.arguments(sch.RedeemSchema)
    @blp.response(200, sch.SecretSchema)
    @blp.doc(security=[])
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Redeem a one-time reference (no token needed: the reference is the credential). Works once."""
        import hashlib

        ref = body["reference"]
        # Audit under a pseudonymous handle of the reference (never the reference itself).
        handle = hashlib.sha256(ref.encode()).hexdigest()[:16]
        g.identity = Identity("reference", handle)
        g.audit = {"action": "secrets.reference.redeem", "resource": "references/" + handle}
        v = svc().redeem_reference(ref)
        g.audit["resource"] = f"secrets/{v.meta.domain}/{v.meta.name}"
        g.audit_detail = {"version": v.version, "reference": handle}
        return {"domain": v.meta.domain, "name": v.meta.name, "version": v.version,
                "created_time": iso(v.meta.versions[0].created_at), "values": v.values}


# ---- administration ----------------------------------------------------------------
@blp.route("/sys/secrets/import")
class ImportPreload(MethodView):
    @blp.response(200, sch.CountsSchema)
    @blp.doc(requestBody={"content": {"application/json": {"example": {
        "domains": [{"name": "onap", "secrets": [{"name": "db", "values": {"user": "u", "password": "p"}}]}]}}}})
    @guard(None, "secrets", action="secrets.import")
    def post(self) -> dict[str, Any]:
        """Import an ONAP SMS preload document (idempotent). Each domain and secret is checked against
        the caller's policies (create / read / update)."""
        from ..errors import PermissionDenied
        from .preload import import_preload

        ident = current_identity()
        assert ident is not None

        def allow(path: str, cap: str) -> None:
            if not ident.can(path, Capability(cap)):
                raise PermissionDenied(f"{cap} on {path} is not allowed for this caller")

        try:
            doc = request.get_json(force=True)
        except RecursionError:
            raise InvalidValues("the JSON body is nested too deeply") from None
        except Exception:  # noqa: BLE001 - werkzeug's BadRequest for undecodable JSON
            raise InvalidValues("the body is not valid JSON") from None
        counts = import_preload(svc(), doc, allow)
        g.audit_detail = counts
        return counts


@blp.route("/sys/secrets/rotate-master")
class RotateMaster(MethodView):
    @blp.response(200, sch.CountsSchema)
    @guard(Capability.SUDO, "sys/secrets", action="secrets.master.rotate")
    def post(self) -> dict[str, Any]:
        """Create a new master key version and rewrap every domain key under it (online)."""
        return svc().rotate_master_key()


@blp.route("/sys/secrets/rewrap")
class Rewrap(MethodView):
    @blp.response(200, sch.CountsSchema)
    @guard(Capability.SUDO, "sys/secrets", action="secrets.rewrap")
    def post(self) -> dict[str, Any]:
        """Rewrap domain keys under the newest master key and re-encrypt every kept version under its
        domain's newest key (online, idempotent)."""
        return svc().rewrap()


@blp.route("/sys/secrets/export")
class Export(MethodView):
    @blp.response(200, sch.ExportSchema)
    @guard(Capability.SUDO, "sys/secrets", action="secrets.export")
    def post(self) -> Any:
        """Encrypted backup: wrapped domain keys and ciphertexts with a token-made MAC. Only a deployment
        holding the same master key can restore it."""
        return current_app.json.response(svc().export())


@blp.route("/sys/secrets/restore")
class Restore(MethodView):
    @blp.arguments(sch.ExportSchema)
    @blp.response(200, sch.CountsSchema)
    @guard(Capability.SUDO, "sys/secrets", action="secrets.restore")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Restore an export (idempotent: existing secrets are left alone)."""
        return svc().restore(body)


# ---- bad paths and app-level wiring -------------------------------------------------
def _slash_in_name(**_kw: Any) -> Response:
    raise InvalidName("domain and secret names must not contain '/' (no route matches this path)")


def _check_json_depth() -> None:
    """Refuse bodies the JSON parser cannot handle (deep nesting) with a 400, not a 500."""
    if request.blueprint != blp.name or request.method not in ("POST", "PUT", "PATCH"):
        return
    try:
        request.get_json(silent=True)
    except RecursionError:
        raise InvalidValues("the JSON body is nested too deeply") from None


@blp.record_once
def _on_register(state: Any) -> None:
    app = state.app
    for rule, methods in (("/v1/domains/<string:domain>/secrets/<path:rest>", ["GET", "PUT", "PATCH", "DELETE", "POST"]),):
        app.add_url_rule(rule, endpoint="secrets_bad_name", view_func=_slash_in_name, methods=methods)
    app.before_request(_check_json_depth)
    from . import fast
    from .onap import install_identity_resolvers

    fast.register(app)
    install_identity_resolvers(app)


__all__ = ["blp", "json"]
