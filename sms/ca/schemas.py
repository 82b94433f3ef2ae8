"""Request shapes of the CA API (marshmallow; unknown fields are refused). Passwords and keys
are load-only and never echoed in validation errors (those carry field names and fixed texts)."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from ca.types import CertStatus
from hsm.types import KeyType

KEY_TYPES = tuple(k.value for k in KeyType if k.is_asymmetric)
CERT_FORMATS = ("pem", "der", "p7b", "p7b-pem", "json")
MAX_DAYS = 36500


class CaCreateSchema(ma.Schema):
    type = fields.String(load_default="root", validate=validate.OneOf(("root", "intermediate", "import")),
                         metadata={"description": "root (key generated in the token), intermediate (signed by "
                                                  "`parent`), import (admin-made certificate + private key)"})
    name = fields.String(required=True, validate=validate.Length(1, 63))
    subject = fields.String(validate=validate.Length(1, 1024), metadata={"description": "RFC 4514, e.g. CN=My CA,O=Acme"})
    key_type = fields.String(load_default="ec-p256", validate=validate.OneOf(KEY_TYPES))
    validity_days = fields.Integer(strict=True, validate=validate.Range(1, MAX_DAYS))
    path_length = fields.Integer(strict=True, allow_none=True, validate=validate.Range(0, 16))
    parent = fields.String(validate=validate.Length(1, 63))
    certificate = fields.String(validate=validate.Length(1, 64 * 1024), metadata={"description": "PEM or base64 DER"})
    private_key = fields.String(load_only=True, validate=validate.Length(1, 64 * 1024),
                                metadata={"description": "PEM or base64 DER (PKCS#8 or traditional); imported "
                                                         "into the token as a non-extractable object"})
    password = fields.String(load_only=True, validate=validate.Length(1, 1024))
    chain = fields.String(validate=validate.Length(1, 256 * 1024), metadata={"description": "PEM bundle of issuers"})
    builtin_profiles = fields.Boolean(load_default=True)
    crl_validity_hours = fields.Integer(strict=True, validate=validate.Range(1, 24 * 365))
    crl_renew_before_hours = fields.Integer(strict=True, validate=validate.Range(0, 24 * 365))
    ocsp_validity_minutes = fields.Integer(strict=True, validate=validate.Range(1, 60 * 24 * 30))


class SignSchema(ma.Schema):
    csr = fields.String(required=True, validate=validate.Length(1, 64 * 1024),
                        metadata={"description": "PKCS#10 request, PEM or base64 DER"})
    profile = fields.String(required=True, validate=validate.Length(1, 63))
    validity_days = fields.Integer(strict=True, validate=validate.Range(1, MAX_DAYS))
    validity_seconds = fields.Integer(strict=True, validate=validate.Range(1, MAX_DAYS * 86400))
    renewal_of = fields.String(validate=validate.Length(1, 64))
    format = fields.String(validate=validate.OneOf(CERT_FORMATS))
    include_root = fields.Boolean(load_default=False)


class SignQuery(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    profile = fields.String(validate=validate.Length(1, 63))
    validity_days = fields.Integer(validate=validate.Range(1, MAX_DAYS))
    format = fields.String(validate=validate.OneOf(CERT_FORMATS))
    include_root = fields.Boolean(load_default=False)


class KeygenSchema(ma.Schema):
    profile = fields.String(required=True, validate=validate.Length(1, 63))
    subject = fields.String(required=True, validate=validate.Length(1, 1024))
    sans = fields.List(fields.String(validate=validate.Length(1, 1024)), load_default=list,
                       validate=validate.Length(0, 100), metadata={"description": 'e.g. ["DNS:a.example", "IP:10.0.0.1"]'})
    key_type = fields.String(load_default="ec-p256", validate=validate.OneOf(KEY_TYPES))
    password = fields.String(required=True, load_only=True, validate=validate.Length(8, 1024))
    validity_days = fields.Integer(strict=True, validate=validate.Range(1, MAX_DAYS))
    friendly_name = fields.String(validate=validate.Length(1, 128))


class RevokeSchema(ma.Schema):
    reason = fields.Raw(load_default="unspecified",
                        metadata={"description": "RFC 5280 CRLReason: name (keyCompromise) or code (1)"})
    invalidity_date = fields.AwareDateTime()


class UsageSchema(ma.Schema):
    host = fields.String(required=True, validate=validate.Length(1, 255))
    in_use = fields.Boolean(load_default=True)
    detail = fields.String(load_default="", validate=validate.Length(0, 1024))


class SearchQuery(ma.Schema):
    subject = fields.String(validate=validate.Length(1, 256))
    san = fields.String(validate=validate.Length(1, 256))
    serial = fields.String(validate=validate.Length(1, 64))
    profile = fields.String(validate=validate.Length(1, 63))
    requester = fields.String(validate=validate.Length(1, 256))
    status = fields.String(validate=validate.OneOf(tuple(s.value for s in CertStatus)))
    expires_after = fields.AwareDateTime()
    expires_before = fields.AwareDateTime()
    expiring_within_days = fields.Integer(validate=validate.Range(0, MAX_DAYS))
    ca = fields.String(validate=validate.Length(1, 63))
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(0, 10_000_000))


class ReportQuery(ma.Schema):
    ca = fields.String(validate=validate.Length(1, 63))
    expiring_days = fields.Integer(load_default=30, validate=validate.Range(0, MAX_DAYS))
    format = fields.String(load_default="json", validate=validate.OneOf(("json", "csv")))


class OcspResponderSchema(ma.Schema):
    validity_days = fields.Integer(load_default=30, strict=True, validate=validate.Range(1, 366),
                                   metadata={"description": "lifetime of the responder certificate (clamped to the CA's)"})
