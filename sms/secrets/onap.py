"""ONAP AAF SMS compatible routes (/v1/sms/...), byte for byte where ONAP's clients look.

Success bodies are what SMS's Go handlers wrote with ``json.Marshal``: compact JSON, struct
field order, map keys sorted, ``<``, ``>`` and ``&`` escaped as ``\\u003c`` etc.
Status codes: 201 for domain and secret creation, 204 for deletes, 200 otherwise; 400 for
bad input; errors that ONAP reported as 500 (not found, already exists) stay 500 while
``onap_compat_errors`` is on (default), because onapsmsclient maps 404/409 to
UnexpectedError. Error bodies are csm problem documents (ONAP's clients only keep the text).

Authentication: onapsmsclient sends no token. A compat caller is authenticated by
1. a csm token (``X-CSM-Token``) if it sends one, else
2. a TLS client certificate mapped by ``client_cert_rules`` (gunicorn), else
3. the policies named in ``onap_anonymous_policies`` — an explicit, audited opt-in that
   applies only to /v1/sms routes; when it is empty (the default) such callers get 401.
Policy paths are the native ones: ``secrets/<domain>`` and ``secrets/<domain>/<name>``.
``/v1/sms/healthcheck`` and ``/v1/sms/quorum/status`` need no identity (as in ONAP).
"""
from __future__ import annotations

import json
from typing import Any

from flask import Flask, Response, request
from flask.views import MethodView
from flask_smorest import Blueprint

from ..auth.policy import Capability
from ..auth.service import Identity
from ..errors import PermissionDenied, classify
from ..web import current_identity, handle_any_exception, problem_response, services
from ..web import guard as _guard
from .certauth import PolicyCache, identity_for, load_rules, peer_certificate
from .errors import InvalidName, InvalidValues
from .limits import check_name
from .store import WriteMode
from .wiring import secrets_service

blp = Blueprint("onap_sms", __name__, url_prefix="/v1/sms",
                description="ONAP AAF SMS compatibility (onapsmsclient works unchanged)")

_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                             "\u2029": "\\u2029"})


def go_json(obj: Any, *, sort_keys: bool = False) -> bytes:
    """Encode like Go's json.Marshal (compact, HTML-escaped, UTF-8)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    return text.translate(_GO_ESCAPES).encode()


def _go_map_values(values: dict[str, Any]) -> str:
    # Go marshals map[string]interface{} with sorted keys; the struct around it keeps field order.
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False, sort_keys=True).translate(_GO_ESCAPES)


def raw(body: bytes | str, status: int = 200) -> Response:
    data = body.encode() if isinstance(body, str) else body
    resp = Response(data, status=status)
    if data:
        resp.headers["Content-Type"] = "application/json"
    else:
        del resp.headers["Content-Type"]
    return resp


def _body() -> dict[str, Any]:
    try:
        doc = request.get_json(force=True, silent=False)
    except RecursionError:
        raise InvalidValues("the JSON body is nested too deeply") from None
    except Exception:  # noqa: BLE001 - werkzeug raises BadRequest for undecodable JSON
        raise InvalidValues("the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InvalidValues("the body must be a JSON object")
    return doc


def trim(name: Any) -> Any:
    """ONAP trims names (client and server side: strings.TrimSpace)."""
    return name.strip() if isinstance(name, str) else name


def _seg(name: Any, kind: str = "secret") -> str:
    try:
        return check_name(trim(name), kind=kind)
    except InvalidName:
        return "~invalid~"


def guard(capability: Capability, path: str, *, action: str) -> Any:
    def resource(**kw: Any) -> str:
        return path.format(**{k: _seg(v, "domain" if k == "domain" else "secret") for k, v in kw.items()})

    return _guard(capability, resource, action=action)


def svc() -> Any:
    return secrets_service(services())


def _body_name(kind: str = "secret") -> str:
    doc = request.get_json(silent=True)
    return _seg(doc.get("name") if isinstance(doc, dict) else None, kind)


def _require(path: str, capability: Capability) -> None:
    ident = current_identity()
    assert ident is not None
    if not ident.can(path, capability):
        raise PermissionDenied(f"{capability.value} on {path} is not allowed for this caller")


@blp.route("/domain")
class SmsDomains(MethodView):
    @blp.doc(requestBody={"content": {"application/json": {"example": {"name": "mydomain"}}}})
    @blp.response(201, description='{"uuid":"…","name":"…"}')
    @_guard(Capability.CREATE, lambda **kw: "secrets/" + _body_name("domain"), action="onap.domain.create")
    def post(self) -> Response:
        """Create a domain → 201 {"uuid","name"}."""
        rec = svc().create_domain(trim(_body().get("name")))
        return raw(go_json({"uuid": rec.id, "name": rec.name}), 201)


@blp.route("/domain/<string:domain>")
class SmsDomain(MethodView):
    @blp.response(204)
    @guard(Capability.DELETE, "secrets/{domain}", action="onap.domain.delete")
    def delete(self, domain: str) -> Response:
        """Delete a domain with all its secrets (ONAP unmounted the whole Vault mount)."""
        svc().delete_domain(trim(domain), force=True)
        return raw(b"", 204)


@blp.route("/domain/<string:domain>/secret")
class SmsSecrets(MethodView):
    @blp.response(200, description='{"secretnames":[…]}')
    @guard(Capability.LIST, "secrets/{domain}", action="onap.secret.list")
    def get(self, domain: str) -> Response:
        """List secret names → {"secretnames": [...]}."""
        return raw(go_json({"secretnames": svc().list_secrets(trim(domain))}))

    @blp.doc(requestBody={"content": {"application/json": {"example": {"name": "s", "values": {"k": "v"}}}}})
    @blp.response(201, description="empty body")
    @_guard(None, lambda domain: f"secrets/{_seg(domain, 'domain')}/{_body_name()}",
            action="onap.secret.store")
    def post(self, domain: str) -> Response:
        """Store a secret → 201, empty body. An existing name gets a new version (needs ``update``;
        a new one needs ``create``)."""
        body = _body()
        if set(body) - {"name", "values"}:
            raise InvalidValues("unknown fields; expected name and values")
        d, name = trim(domain), trim(body.get("name"))
        s = svc()
        check_name(d, kind="domain")
        check_name(name)
        path = f"secrets/{d}/{name}"
        exists = name in s.list_secrets(d)
        _require(path, Capability.UPDATE if exists else Capability.CREATE)
        s.write(d, name, body.get("values"), mode=WriteMode.UPSERT)
        return raw(b"", 201)


@blp.route("/domain/<string:domain>/secret/<string:name>")
class SmsSecret(MethodView):
    @blp.response(200, description='{"name":"…","values":{…}}')
    @guard(Capability.READ, "secrets/{domain}/{name}", action="onap.secret.read")
    def get(self, domain: str, name: str) -> Response:
        """Read a secret → {"name","values"}."""
        v = svc().read(trim(domain), trim(name))
        return raw('{"name":' + go_json(trim(name)).decode() + ',"values":' + _go_map_values(v.values) + "}")

    @blp.response(204)
    @guard(Capability.DELETE, "secrets/{domain}/{name}", action="onap.secret.delete")
    def delete(self, domain: str, name: str) -> Response:
        """Delete a secret with all its versions → 204."""
        svc().purge(trim(domain), trim(name))
        return raw(b"", 204)


@blp.route("/healthcheck")
class SmsHealth(MethodView):
    @blp.response(200, description="empty body; 500 when the store or the token fails")
    @blp.doc(security=[])
    def get(self) -> Response:
        """Health: the store answers and the token holds the master key (no writes, unlike ONAP)."""
        svc().probe()
        return raw(b"", 200)


@blp.route("/quorum/status")
class SmsQuorumStatus(MethodView):
    @blp.response(200, description='{"sealstatus":false}')
    @blp.doc(security=[])
    def get(self) -> Response:
        """Seal status → {"sealstatus": bool}: true while the token cannot be logged in to."""
        try:
            services().keystore.get()
            sealed = False
        except Exception:  # noqa: BLE001 - any failure to open the token reads as sealed
            sealed = True
        return raw(go_json({"sealstatus": sealed}))


def onap_errors(exc: Exception) -> Response:
    """Error handler for /v1/sms: ONAP's 500 instead of 404/409 (when onap_compat_errors is on)."""
    resp = handle_any_exception(exc)
    if services().settings.onap_compat_errors and resp.status_code in (404, 409):
        pt, detail, ext = classify(exc)
        return problem_response(500, pt.uri, pt.title, detail, {"compat_status": resp.status_code, **ext})
    return resp


blp.register_error_handler(Exception, onap_errors)


# ---- identities (client certificates; ONAP anonymous policies) ------------------------
def install_identity_resolvers(app: Flask) -> None:
    svc_ = app.extensions["csm"]
    resolvers = svc_.extras.setdefault("identity_resolvers", [])
    if any(getattr(r, "_csm_secrets", False) for r in resolvers):
        return
    settings = svc_.settings
    policies = PolicyCache(svc_.auth.policies_by_name)
    if settings.client_cert_rules:
        rules = load_rules(settings.client_cert_rules)

        def cert_identity() -> Identity | None:
            cert = peer_certificate(request.environ)
            return identity_for(cert, rules, policies) if cert else None

        cert_identity._csm_secrets = True  # type: ignore[attr-defined]
        resolvers.append(cert_identity)
    anon = tuple(p.strip() for p in settings.onap_anonymous_policies.split(",") if p.strip())
    if anon:
        def onap_anonymous() -> Identity | None:
            if not request.path.startswith("/v1/sms/"):
                return None
            return Identity("anonymous", "onap-compat", policies.get(anon))

        onap_anonymous._csm_secrets = True  # type: ignore[attr-defined]
        resolvers.append(onap_anonymous)
