"""REST API of the certificate authority (/v1/ca).

Policy paths (capabilities of :mod:`sms.auth.policy`):

* ``ca`` — ``list`` CAs; ``ca/<name>`` — ``create`` (root, intermediate, import), ``read``;
  an intermediate also needs ``sudo`` on ``ca/<parent>`` (the parent's key signs it);
* ``ca/<name>/profiles`` — ``list``; ``ca/<name>/profiles/<profile>`` — ``read``, ``update``
  (create or replace), ``delete``;
* ``ca/<name>/sign/<profile>`` — ``sign`` (CSR signing and server-side key generation);
* ``ca/<name>/certs`` — ``list``/``read`` the inventory, ``revoke`` (also
  releasing a certificateHold); ``sudo`` lets a caller post
  usage statements for certificates it did not request; ``ca/certificates`` — ``list`` across CAs;
* ``ca/report`` — ``read`` the usage report;
* ``ca/<name>`` — ``sudo`` issues or removes the CA's delegated OCSP responder, ``read`` shows it.

Unauthenticated: the CA certificate and chain (PEM, DER, PKCS#7), the CRL (DER, PEM) and OCSP.
The requester recorded with a certificate is the caller's identity label (``token:<accessor>``
or ``cert:<subject>``).
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import logging
from collections.abc import Callable
from typing import Any, Final, TypeVar
from urllib.parse import unquote

from cryptography.hazmat.primitives import serialization
from flask import Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint

from ca import (
    CaEngine,
    CaError,
    CertificateQuery,
    CertStatus,
    ExportFormat,
    InvalidRequest,
    IssuedCertificate,
    IssueRequest,
    Profile,
    RevokeRequest,
    ServerKeygenRequest,
    UsageUpdate,
    encode_certificates,
)
from ca.engine import MAX_CSR_BYTES
from ca.ocsp import MAX_REQUEST_BYTES
from hsm.errors import HsmError
from hsm.types import KeyType

from ..auth.policy import Capability
from ..errors import BadRequest, NotFound, PermissionDenied
from ..web import current_identity, guard, handle_any_exception, services
from . import schemas as sch
from .errors import NotAcceptable, PayloadTooLarge, UnsupportedMediaType, problem_extensions, register
from .service import (
    ca_json,
    cert_json,
    create_ca,
    decode_blob,
    issue_ocsp_responder,
    parse_reason,
    parse_san,
    parse_serial,
    profile_json,
    remove_ocsp_responder,
    report_csv,
    report_json,
    stored_ocsp_responder,
)
from .wiring import ca_engine, crl_publisher, ocsp_responder

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

register()
blp = Blueprint("ca", __name__, url_prefix="/v1/ca",
                description="Certificate authority: CAs in the token, profiles, CSR signing, revocation, CRL, OCSP")

MAX_JSON_BYTES: Final = 256 * 1024
PEM_CHAIN = "application/pem-certificate-chain"
MEDIA: Final = {
    "pem": PEM_CHAIN, "der": "application/pkix-cert", "p7b": "application/pkcs7-mime",
    "p7b-pem": "application/x-pem-file", "json": "application/json",
}
_BY_MEDIA: Final = {PEM_CHAIN: "pem", "application/x-pem-file": "pem", "application/pkix-cert": "der",
                    "application/pkcs7-mime": "p7b", "application/x-pkcs7-certificates": "p7b",
                    "application/json": "json"}
CSR_TYPES: Final = ("application/pkcs10", "application/x-pem-file", "text/plain", "application/octet-stream")


@blp.errorhandler(CaError)
def _ca_problem(exc: CaError) -> Response:
    """Engine errors: the shared table gives type/status, this adds the members (violations...)."""
    exc.problem_extensions = problem_extensions(exc)  # type: ignore[attr-defined]
    return handle_any_exception(exc)


def engine() -> CaEngine:
    return ca_engine(services())


def requester() -> str:
    ident = current_identity()
    assert ident is not None
    return ident.label


def body_limit(limit: int) -> Callable[[F], F]:
    """Refuse a body larger than ``limit`` with a 413 problem before anything parses it."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            n = request.content_length
            if n is not None and n > limit:
                raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
            if n is None and request.method in ("POST", "PUT", "PATCH"):
                data = request.stream.read(limit + 1)
                if len(data) > limit:
                    raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
                request._cached_data = data  # type: ignore[attr-defined]
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


def _binary(data: bytes, mimetype: str, *, status: int = 200, cache_seconds: int | None = None,
            filename: str | None = None) -> Response:
    resp = current_app.response_class(data, status=status, mimetype=mimetype)
    if cache_seconds is not None:
        resp.headers["Cache-Control"] = f"public, max-age={max(0, cache_seconds)}"
    if filename:
        resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return resp


def _wanted_format(explicit: str | None) -> str:
    if explicit:
        return explicit
    accept = request.accept_mimetypes
    if not accept or accept.best == "*/*":
        return "pem"
    best = accept.best_match(list(_BY_MEDIA), default=None)
    if best is None:
        raise NotAcceptable("this resource is available as " + ", ".join(sorted(set(_BY_MEDIA))))
    return _BY_MEDIA[best]


def _issued_response(issued: IssuedCertificate, fmt: str, include_root: bool, ca_name: str) -> Response:
    r = issued.record
    if fmt == "pem":
        resp = _binary(issued.pem(include_root=include_root), PEM_CHAIN, status=201)
    elif fmt == "der":
        resp = _binary(issued.der(), MEDIA["der"], status=201)
    elif fmt in ("p7b", "p7b-pem"):
        resp = _binary(issued.pkcs7(include_root=True, pem=fmt == "p7b-pem"), MEDIA[fmt], status=201)
    else:
        doc = cert_json(r, now=engine().now())
        doc["certificate"] = issued.certificate.public_bytes(serialization.Encoding.PEM).decode()
        doc["chain"] = [c.public_bytes(serialization.Encoding.PEM).decode() for c in issued.chain]
        resp = current_app.json.response(doc)
        resp.status_code = 201
    resp.headers["Location"] = f"/v1/ca/{ca_name}/certs/{r.serial:x}"
    resp.headers["X-Certificate-Serial"] = f"{r.serial:x}"
    return resp


def _validity(body: dict[str, Any]) -> dt.timedelta | None:
    if body.get("validity_seconds"):
        return dt.timedelta(seconds=body["validity_seconds"])
    if body.get("validity_days"):
        return dt.timedelta(days=body["validity_days"])
    return None


# ---- CAs ---------------------------------------------------------------------------------------------
@blp.route("")
class Cas(MethodView):
    @guard(Capability.LIST, "ca", action="ca.list")
    def get(self) -> Any:
        """List the CAs."""
        settings = services().settings
        return {"cas": [ca_json(c, settings) for c in engine().list_cas()]}

    @body_limit(MAX_JSON_BYTES)
    @blp.arguments(sch.CaCreateSchema)
    @guard(Capability.CREATE, lambda **kw: "ca/" + _body_name(), action="ca.create")
    @blp.alt_response(201, success=True, description="the new CA")
    def post(self, body: dict[str, Any]) -> Any:
        """Create a CA: ``type`` root (key generated in the token, self-signed), intermediate
        (signed by ``parent``) or import (certificate + private key; the key becomes a
        non-extractable token object). Installs the built-in profiles unless
        ``builtin_profiles`` is false."""
        svc = services()
        if body.get("type") == "intermediate" and body.get("parent"):
            # The parent's key signs the new CA's certificate: administrative use of the parent.
            ident = current_identity()
            assert ident is not None
            parent = f"ca/{body['parent']}"
            if not ident.can(parent, Capability.SUDO):
                raise PermissionDenied(f"creating an intermediate CA needs sudo on {parent}")
        record = create_ca(engine(), svc.settings, body, requester=requester())
        resp = current_app.json.response(ca_json(record, svc.settings))
        resp.status_code = 201
        resp.headers["Location"] = f"/v1/ca/{record.name}"
        return resp


def _body_name() -> str:
    return _json_field("name")


@blp.route("/<string:name>")
class Ca(MethodView):
    @guard(Capability.READ, "ca/{name}", action="ca.read")
    def get(self, name: str) -> Any:
        """A CA: subject, key type and label, validity, parent, CRL/OCSP settings and URLs."""
        return ca_json(engine().get_ca(name), services().settings)


_CA_DOWNLOADS: Final = {
    "ca.pem": (False, ExportFormat.PEM, "application/x-pem-file"),
    "ca.crt": (False, ExportFormat.PEM, "application/x-pem-file"),
    "ca.der": (False, ExportFormat.DER, "application/pkix-cert"),
    "ca.p7b": (False, ExportFormat.PKCS7_DER, "application/pkcs7-mime"),
    "chain.pem": (True, ExportFormat.PEM, "application/x-pem-file"),
    "chain.p7b": (True, ExportFormat.PKCS7_DER, "application/pkcs7-mime"),
    "chain.p7b.pem": (True, ExportFormat.PKCS7_PEM, "application/x-pem-file"),
}


@blp.route("/<string:name>/<any('ca.pem','ca.crt','ca.der','ca.p7b','chain.pem','chain.p7b','chain.p7b.pem'):file>")
@blp.doc(security=[])
def download_ca(name: str, file: str) -> Response:
    """The CA certificate, or the chain (this CA first, root last), without authentication."""
    with_chain, fmt, mimetype = _CA_DOWNLOADS[file]
    record = engine().get_ca(name)
    certs = record.chain if with_chain else (record.certificate,)
    return _binary(encode_certificates(certs, fmt), mimetype, cache_seconds=3600)


# ---- profiles ----------------------------------------------------------------------------------------
@blp.route("/<string:name>/profiles")
class Profiles(MethodView):
    @guard(Capability.LIST, "ca/{name}/profiles", action="ca.profile.list")
    def get(self, name: str) -> Any:
        """The CA's profiles."""
        e = engine()
        e.get_ca(name)
        return {"profiles": [profile_json(p) for p in e.list_profiles(name)]}


@blp.route("/<string:name>/profiles/<string:profile>")
class ProfileView(MethodView):
    @guard(Capability.READ, "ca/{name}/profiles/{profile}", action="ca.profile.read")
    def get(self, name: str, profile: str) -> Any:
        """One profile (the form PUT accepts)."""
        return profile_json(engine().get_profile(name, profile))

    @body_limit(MAX_JSON_BYTES)
    @guard(Capability.UPDATE, "ca/{name}/profiles/{profile}", action="ca.profile.put")
    def put(self, name: str, profile: str) -> Any:
        """Create or replace a profile. The body is a profile document (see GET); ``name`` and
        ``ca`` default to the URL's and must agree with it."""
        doc = request.get_json(silent=True)
        if not isinstance(doc, dict):
            raise InvalidRequest("body", "a profile is a JSON object")
        if doc.setdefault("name", profile) != profile or doc.setdefault("ca", name) != name:
            raise InvalidRequest("name", "name and ca must match the URL")
        return profile_json(engine().put_profile(Profile.from_dict(doc)))

    @guard(Capability.DELETE, "ca/{name}/profiles/{profile}", action="ca.profile.delete")
    def delete(self, name: str, profile: str) -> Any:
        """Delete a profile (certificates issued under it keep its name)."""
        engine().delete_profile(name, profile)
        return Response(status=204)


# ---- issuance ----------------------------------------------------------------------------------------
_SIGN_SCHEMA: Final = sch.SignSchema()
_SIGN_QUERY: Final = sch.SignQuery()


def _sign_args() -> dict[str, Any]:
    """The CSR and options, from a JSON body or from a raw PKCS#10 body plus query parameters
    (parsed once per request: the policy path needs the profile before the view runs)."""
    cached: dict[str, Any] | None = g.get("ca_sign_args")
    if cached is not None:
        return cached
    if request.mimetype == "application/json":
        doc = request.get_json(silent=True)
        if not isinstance(doc, dict):
            raise InvalidRequest("body", "a JSON object with csr and profile")
        errors = _SIGN_SCHEMA.validate(doc)
        if errors:
            raise BadRequest("the request is not valid", errors=sorted(errors))
        args = _SIGN_SCHEMA.load(doc)
        args["csr"] = decode_blob(args["csr"], "csr")
    else:
        if request.mimetype not in CSR_TYPES:
            raise UnsupportedMediaType("send application/pkcs10 (PEM or DER) or application/json")
        query = request.args
        profile = query.get("profile")
        if (len(query) == 1 and isinstance(profile, str) and 0 < len(profile) <= 63
                and len(query.getlist("profile")) == 1):
            args = {"profile": profile, "include_root": False}  # what the schema makes of ?profile= alone
        else:
            args = _SIGN_QUERY.load(query)
        if not args.get("profile"):
            raise InvalidRequest("profile", "name the profile (?profile=...)")
        args["csr"] = request.get_data(cache=True)
    g.ca_sign_args = args
    return args


def _sign_path(name: str, **_kw: Any) -> str:
    try:
        profile = _sign_args()["profile"]
    except Exception:  # noqa: BLE001 - the view reports the error itself; authorise on a placeholder
        profile = "~invalid~"
    return f"ca/{name}/sign/{profile}"


@blp.route("/<string:name>/sign", methods=["POST"])
@body_limit(MAX_CSR_BYTES * 2)
@guard(Capability.SIGN, _sign_path, action="ca.sign")
@blp.alt_response(201, success=True, content_type=PEM_CHAIN,  # the audit entry commits with the certificate
                  description="the certificate and the intermediates (or DER, PKCS#7, JSON)")
def sign(name: str) -> Response:
    """Sign a PKCS#10 CSR under a profile. Body: the CSR as ``application/pkcs10`` (PEM or DER;
    ``?profile=`` and optional ``validity_days``, ``format``) or JSON ``{"csr", "profile",
    "validity_days"|"validity_seconds", "format", "include_root"}``. Response 201: PEM
    certificate + chain (``application/pem-certificate-chain``) by default; DER, PKCS#7 or JSON
    by ``format`` or ``Accept``. A request that breaks the profile gets a 422 problem listing
    the violations; nothing is issued."""
    args = _sign_args()
    fmt = _wanted_format(args.get("format"))
    renewal = parse_serial(args["renewal_of"]) if args.get("renewal_of") else None
    issued = engine().issue(IssueRequest(ca=name, profile=args["profile"], csr=args["csr"], requester=requester(),
                                         validity=_validity(args), renewal_of=renewal))
    return _issued_response(issued, fmt, bool(args.get("include_root")), name)


@blp.route("/<string:name>/keygen", methods=["POST"])
@body_limit(MAX_JSON_BYTES)
@blp.arguments(sch.KeygenSchema)
@guard(Capability.SIGN, lambda name, **kw: f"ca/{name}/sign/{_json_field('profile')}", action="ca.keygen")
@blp.alt_response(201, success=True, content_type="application/pkcs12",
                  description="the key, certificate and chain as PKCS#12 under the caller's password")
def keygen(body: dict[str, Any], name: str) -> Response:
    """Server-side key generation — the LESS SAFE path, for callers that cannot make keys: a
    key pair is made in software, certified under the profile, and returned once as PKCS#12
    (``application/pkcs12``) encrypted with the caller's ``password``; csm keeps no copy."""
    bundle = engine().issue_with_server_key(ServerKeygenRequest(
        ca=name, profile=body["profile"], subject=body["subject"], requester=requester(),
        password=body["password"], key_type=KeyType(body["key_type"]),
        sans=tuple(parse_san(s) for s in body["sans"]), validity=_validity(body),
        friendly_name=body.get("friendly_name")))
    serial = bundle.issued.record.serial
    resp = _binary(bundle.pkcs12, "application/pkcs12", status=201, filename=f"{serial:x}.p12")
    resp.headers["X-Certificate-Serial"] = f"{serial:x}"
    resp.headers["Location"] = f"/v1/ca/{name}/certs/{serial:x}"
    return resp


def _json_field(key: str) -> str:
    doc = request.get_json(silent=True)
    v = doc.get(key) if isinstance(doc, dict) else None
    return v if isinstance(v, str) and v.replace("-", "").replace(".", "").replace("_", "").isalnum() \
        and len(v) <= 63 else "~invalid~"


# ---- inventory, revocation, usage ----------------------------------------------------------------------
def _search(args: dict[str, Any], ca_name: str | None) -> Any:
    e = engine()
    now = e.now()
    after, before = args.get("expires_after"), args.get("expires_before")
    if args.get("expiring_within_days") is not None:
        after = after or now
        before = now + dt.timedelta(days=args["expiring_within_days"])
    q = CertificateQuery(
        ca_name=ca_name, serial=parse_serial(args["serial"]) if args.get("serial") else None,
        subject_contains=args.get("subject"), san_contains=args.get("san"), profile=args.get("profile"),
        requester=args.get("requester"), status=CertStatus(args["status"]) if args.get("status") else None,
        expires_after=after, expires_before=before, limit=args["limit"], offset=args["offset"])
    if ca_name is not None:
        e.get_ca(ca_name)
    return {"certificates": [cert_json(r, now=now) for r in e.search(q)], "limit": q.limit, "offset": q.offset}


@blp.route("/certificates")
@blp.arguments(sch.SearchQuery, location="query")
@guard(Capability.LIST, "ca/certificates", action="ca.cert.search")
def search_all(args: dict[str, Any]) -> Any:
    """Search the inventory of every CA (``ca`` narrows to one): subject / SAN substrings,
    serial (hex), profile, requester, status (active, revoked, expired), expiry window."""
    return _search(args, args.get("ca"))


@blp.route("/<string:name>/certs")
@blp.arguments(sch.SearchQuery, location="query")
@guard(Capability.LIST, "ca/{name}/certs", action="ca.cert.search")
def search(args: dict[str, Any], name: str) -> Any:
    """Search this CA's inventory (filters as for /v1/ca/certificates)."""
    return _search(args, name)


@blp.route("/<string:name>/certs/<string:serial>")
@guard(Capability.READ, "ca/{name}/certs", action="ca.cert.read")
def get_certificate(name: str, serial: str) -> Any:
    """One issued certificate (JSON; ``?format=pem|der`` for the certificate itself)."""
    e = engine()
    record = e.get_certificate(parse_serial(serial))
    if record.ca_name != name:
        from ca import UnknownSerial

        raise UnknownSerial(record.serial)
    fmt = request.args.get("format", "json")
    if fmt == "pem":
        return _binary(record.certificate.public_bytes(serialization.Encoding.PEM), "application/x-pem-file")
    if fmt == "der":
        return _binary(record.der, "application/pkix-cert")
    doc = cert_json(record, now=e.now())
    doc["certificate"] = record.certificate.public_bytes(serialization.Encoding.PEM).decode()
    doc["usage"] = [{"host": u.host, "in_use": u.in_use, "detail": u.detail, "reported_by": u.reported_by}
                    for u in e.certificates.list_usage(serial=record.serial, limit=100)]
    return doc


@blp.route("/<string:name>/certs/<string:serial>/revoke", methods=["POST"])
@body_limit(MAX_JSON_BYTES)
@blp.arguments(sch.RevokeSchema)
@guard(Capability.REVOKE, "ca/{name}/certs", action="ca.cert.revoke")
def revoke(body: dict[str, Any], name: str, serial: str) -> Any:
    """Revoke by serial (hex) with an RFC 5280 reason (``keyCompromise`` or 1...). 404 for an
    unknown serial, 409 if already revoked (a certificateHold can be made permanent). The CRL
    is re-signed at once."""
    e = engine()
    record = e.revoke(RevokeRequest(serial=parse_serial(serial), reason=parse_reason(body["reason"]),
                                    requester=requester(), ca=name, invalidity_date=body.get("invalidity_date")))
    try:
        crl_publisher(services()).refresh(name)
    except HsmError as exc:  # served lazily once the token is back
        log.warning("CRL of %s not re-signed after a revocation: %s", name, type(exc).__name__)
    return cert_json(record, now=e.now())


@blp.route("/<string:name>/certs/<string:serial>/release-hold", methods=["POST"])
@body_limit(MAX_JSON_BYTES)
@guard(Capability.REVOKE, "ca/{name}/certs", action="ca.cert.release_hold")
def release_hold(name: str, serial: str) -> Any:
    """Release a certificate revoked with ``certificateHold`` (no body): it leaves the next
    CRL and OCSP answers ``good`` again. 404 for an unknown serial, 409 if it is not on hold.
    The CRL is re-signed at once."""
    e = engine()
    record = e.release_hold(parse_serial(serial), requester=requester(), ca=name)
    try:
        crl_publisher(services()).refresh(name)
    except HsmError as exc:  # served lazily once the token is back
        log.warning("CRL of %s not re-signed after a hold release: %s", name, type(exc).__name__)
    return cert_json(record, now=e.now())


@blp.route("/<string:name>/certs/<string:serial>/usage", methods=["POST"])
@body_limit(MAX_JSON_BYTES)
@blp.arguments(sch.UsageSchema)
@guard(None, "ca/{name}/certs", action="ca.cert.usage")
def report_usage(body: dict[str, Any], name: str, serial: str) -> Any:
    """A client says where its certificate is used ("in use on host X"). Only the certificate's
    requester may post, unless the caller has ``sudo`` on ``ca/<name>/certs``."""
    ident = current_identity()
    assert ident is not None
    e = engine()
    sn = parse_serial(serial)
    if e.get_certificate(sn).ca_name != name:
        from ca import UnknownSerial

        raise UnknownSerial(sn)
    u = e.record_usage(UsageUpdate(serial=sn, reported_by=ident.label, host=body["host"], in_use=body["in_use"],
                                   detail=body["detail"]), admin=ident.can(f"ca/{name}/certs", Capability.SUDO))
    return {"serial": f"{u.serial:x}", "host": u.host, "in_use": u.in_use, "detail": u.detail,
            "reported_by": u.reported_by}


@blp.route("/report")
@blp.arguments(sch.ReportQuery, location="query")
@guard(Capability.READ, "ca/report", action="ca.report")
def report(args: dict[str, Any]) -> Any:
    """Usage report: per CA, profile and requester issued / renewed / revoked / expiring within
    ``expiring_days``; signatures per CA key and kind; clients' usage statements. JSON, or CSV
    with ``format=csv``."""
    rep = engine().usage_report(ca_name=args.get("ca"), expiring_within=dt.timedelta(days=args["expiring_days"]))
    if args["format"] == "csv":
        return _binary(report_csv(rep).encode(), "text/csv")
    return report_json(rep)


# ---- CRL and OCSP (unauthenticated) --------------------------------------------------------------------
@blp.route("/<string:name>/<any('crl.der','crl.crl','crl.pem'):file>")
@blp.doc(security=[])
def crl(name: str, file: str) -> Response:
    """The CA's current CRL (signed in the token; re-signed after a revocation and before
    nextUpdate). If the token is unavailable, the last CRL is served until its nextUpdate."""
    e = engine()
    try:
        record = crl_publisher(services()).current(name)
    except HsmError:
        record = e.cas.latest_crl(name)
        if record is None or record.next_update <= e.now():
            raise
    ca = e.get_ca(name)
    fresh_for = int((record.next_update - ca.settings.crl_renew_before - e.now()).total_seconds())
    pem = file == "crl.pem"
    resp = _binary(record.pem if pem else record.der, "application/x-pem-file" if pem else "application/pkix-crl",
                   cache_seconds=min(max(fresh_for, 0), 300))
    resp.headers["Expires"] = record.next_update.strftime("%a, %d %b %Y %H:%M:%S GMT")
    resp.headers["X-CRL-Number"] = str(record.number)
    return resp


def _ocsp(name: str, der: bytes) -> Response:
    answer = ocsp_responder(services(), name).respond(der)
    resp = _binary(answer.der, "application/ocsp-response")
    if answer.next_update is not None and request.method == "GET":
        resp.headers["Cache-Control"] = "public, max-age=60"
    return resp


@blp.route("/<string:name>/ocsp", methods=["POST"])
@blp.doc(security=[])
@body_limit(MAX_REQUEST_BYTES)
def ocsp_post(name: str) -> Response:
    """OCSP (RFC 6960) over POST: ``application/ocsp-request`` in, ``application/ocsp-response``
    out. Malformed requests get a malformedRequest OCSP response, not a problem document."""
    if request.mimetype != "application/ocsp-request":
        raise UnsupportedMediaType("send application/ocsp-request")
    return _ocsp(name, request.get_data(cache=True))


@blp.route("/<string:name>/ocsp/<path:encoded>", methods=["GET"])
@blp.doc(security=[])
def ocsp_get(name: str, encoded: str) -> Response:
    """OCSP (RFC 6960 appendix A.1) over GET: the base64 DER request, URL-encoded, in the path."""
    if len(encoded) > MAX_REQUEST_BYTES * 2:
        raise PayloadTooLarge("the OCSP request is too large")
    try:
        der = base64.b64decode(unquote(encoded), validate=False)
    except (binascii.Error, ValueError):
        der = b""
    return _ocsp(name, der)


def _responder_json(name: str, cred: Any) -> dict[str, Any]:
    cert = cred.certificate
    return {"ca": name, "serial": f"{cert.serial_number:x}", "subject": cert.subject.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.isoformat(), "not_after": cert.not_valid_after_utc.isoformat(),
            "key_label": cred.key_label,
            "certificate": cert.public_bytes(serialization.Encoding.PEM).decode()}


@blp.route("/<string:name>/ocsp-responder")
class OcspResponderView(MethodView):
    @guard(Capability.READ, "ca/{name}", action="ca.ocsp_responder.read")
    @blp.alt_response(200, success=True, description="the CA's delegated OCSP responder")
    def get(self, name: str) -> Any:
        """The delegated OCSP responder that signs this CA's OCSP answers; 404 when the CA key signs them."""
        engine().get_ca(name)  # 404 for an unknown CA
        cred = stored_ocsp_responder(services(), name)
        if cred is None:
            raise NotFound(f"CA {name!r} signs its OCSP answers with its own key (no delegated responder)")
        return current_app.json.response(_responder_json(name, cred))

    @body_limit(MAX_JSON_BYTES)
    @blp.arguments(sch.OcspResponderSchema)
    @guard(Capability.SUDO, "ca/{name}", action="ca.ocsp_responder.issue")
    @blp.alt_response(201, success=True, description="the new delegated OCSP responder")
    def post(self, body: dict[str, Any], name: str) -> Any:
        """Issue a delegated OCSP responder (key generated in the token; id-kp-OCSPSigning,
        ocsp-nocheck) and let it sign the CA's OCSP answers from now on (other instances within
        5 s). A previous responder is replaced and its key destroyed."""
        cred = issue_ocsp_responder(services(), name, validity_days=body["validity_days"], requester=requester())
        g.audit_detail = {"serial": f"{cred.certificate.serial_number:x}"}
        resp = current_app.json.response(_responder_json(name, cred))
        resp.status_code = 201
        return resp

    @guard(Capability.SUDO, "ca/{name}", action="ca.ocsp_responder.remove")
    @blp.alt_response(204, success=True, description="the CA key signs OCSP answers again")
    def delete(self, name: str) -> Any:
        """Go back to signing OCSP answers with the CA key (the responder's key is destroyed)."""
        engine().get_ca(name)
        if not remove_ocsp_responder(services(), name):
            raise NotFound(f"CA {name!r} has no delegated OCSP responder")
        return Response(status=204)


@blp.record_once
def _on_register(state: Any) -> None:
    from . import fast

    fast.register(state.app)


__all__ = ["blp"]
