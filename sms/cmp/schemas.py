"""Request and response shapes of the CMP management API (marshmallow; unknown fields are refused).
Shared secrets are load-only: no response ever carries one."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from .store import MAX_SECRETS, OPTIONS, RequestProtection, ResponseProtection

_NAME = validate.Regexp(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_CA = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SECRETS_DOC = {"description": "senderKID (reference) → PBM shared secret; write-only, sealed in the token",
                "example": {"nf-ref": "a long random shared secret"}}


def _option_fields(required: bool) -> dict[str, fields.Field]:
    out: dict[str, fields.Field] = {}
    for name, (kind, default, lo, hi) in OPTIONS.items():
        kw = {} if required else {"load_default": ma.missing}
        if kind is bool:
            out[name] = fields.Boolean(**kw, metadata={"default": default})
        else:
            out[name] = fields.Integer(strict=True, validate=validate.Range(lo, hi), **kw,
                                       metadata={"default": default})
    return out


_PROTECTION = {
    "request_protection": fields.String(validate=validate.OneOf([p.value for p in RequestProtection]),
                                        metadata={"default": RequestProtection.ANY.value}),
    "response_protection": fields.String(validate=validate.OneOf([p.value for p in ResponseProtection]),
                                         metadata={"default": ResponseProtection.IN_KIND.value}),
}

ProfileCreateSchema = ma.Schema.from_dict({
    "name": fields.String(required=True, validate=_NAME),
    "ca": fields.String(required=True, validate=_CA, metadata={"description": "name of the issuing CA"}),
    "cert_profile": fields.String(required=True, validate=_CA,
                                  metadata={"description": "certificate profile of that CA"}),
    "default": fields.Boolean(metadata={"description": "serve /.well-known/cmp (one profile at a time)"}),
    "trust_anchors": fields.String(metadata={"description": "PEM bundle: anchors for signature-protected requests"}),
    "secrets": fields.Dict(keys=fields.String(), values=fields.String(), load_only=True,
                           validate=validate.Length(max=MAX_SECRETS), metadata=_SECRETS_DOC),
    **_PROTECTION, **_option_fields(False),
}, name="CmpProfileCreate")

ProfileUpdateSchema = ma.Schema.from_dict({
    "ca": fields.String(validate=_CA),
    "cert_profile": fields.String(validate=_CA),
    "default": fields.Boolean(),
    "trust_anchors": fields.String(),
    "secrets": fields.Dict(keys=fields.String(), values=fields.String(), load_only=True,
                           validate=validate.Length(max=MAX_SECRETS), metadata=_SECRETS_DOC),
    "remove_secrets": fields.List(fields.String(), validate=validate.Length(max=MAX_SECRETS)),
    **_PROTECTION, **_option_fields(False),
}, name="CmpProfileUpdate")


class AnchorSchema(ma.Schema):
    subject = fields.String()
    sha256 = fields.String()
    not_after = fields.String()


ProfileSchema = ma.Schema.from_dict({
    "name": fields.String(), "ca": fields.String(), "cert_profile": fields.String(), "default": fields.Boolean(),
    "url_path": fields.String(), "request_protection": fields.String(), "response_protection": fields.String(),
    "secret_references": fields.List(fields.String()), "trust_anchors": fields.List(fields.Nested(AnchorSchema)),
    "trust_anchors_pem": fields.String(), "created_time": fields.String(), "updated_time": fields.String(),
    "version": fields.Integer(),
    **{k: (fields.Boolean() if kind is bool else fields.Integer()) for k, (kind, *_r) in OPTIONS.items()},
}, name="CmpProfile")


class ProfileListSchema(ma.Schema):
    profiles = fields.List(fields.Nested(ProfileSchema))


class RequestsQuery(ma.Schema):
    profile = fields.String(validate=_NAME, load_default=None)
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))


class RequestSchema(ma.Schema):
    profile = fields.String()
    transaction_id = fields.String()
    state = fields.String()
    request_type = fields.String()
    body_type = fields.String()
    created = fields.String()
    subject = fields.String()
    key = fields.String()
    requester = fields.Dict()
    reason = fields.String(allow_none=True)
    certificate_serial = fields.String()


class RequestListSchema(ma.Schema):
    requests = fields.List(fields.Nested(RequestSchema))


class RejectSchema(ma.Schema):
    reason = fields.String(load_default="", validate=validate.Length(max=200))


class SweepSchema(ma.Schema):
    revoked = fields.Integer()
    purged = fields.Integer()
