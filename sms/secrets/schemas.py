"""Request and response shapes of the native API (marshmallow; unknown fields are refused)."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate
from webargs.fields import DelimitedList

from .limits import DOMAIN_NAME_MAX, PAIRS_MAX, SECRET_NAME_MAX, VERSIONS_MAX

_VALUES_DOC = {"description": f"Key/value pairs (strings, numbers, booleans); at most {PAIRS_MAX} pairs, 64 KiB",
               "example": {"username": "app", "password": "s3cr3t", "port": 5432}}


class DomainCreateSchema(ma.Schema):
    name = fields.String(required=True, validate=validate.Length(1, DOMAIN_NAME_MAX))
    max_versions = fields.Integer(load_default=None, strict=True, validate=validate.Range(1, VERSIONS_MAX))


class DomainConfigSchema(ma.Schema):
    max_versions = fields.Integer(required=True, allow_none=True, strict=True,
                                  validate=validate.Range(1, VERSIONS_MAX))


class DomainSchema(ma.Schema):
    id = fields.String()
    name = fields.String()
    created_time = fields.String()
    updated_time = fields.String()
    key_version = fields.Integer()
    max_versions = fields.Integer(allow_none=True)
    secrets = fields.Integer(metadata={"description": "number of secrets (domain read only)"})


class DomainListSchema(ma.Schema):
    domains = fields.List(fields.Nested(DomainSchema))


class DomainDeleteQuery(ma.Schema):
    force = fields.Boolean(load_default=False)


class SecretCreateSchema(ma.Schema):
    name = fields.String(required=True, validate=validate.Length(1, SECRET_NAME_MAX))
    values = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), required=True,
                         metadata=_VALUES_DOC)


class SecretWriteSchema(ma.Schema):
    values = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), required=True,
                         metadata=_VALUES_DOC)
    cas = fields.Integer(load_default=None, strict=True, validate=validate.Range(min=0),
                         metadata={"description": "check-and-set: the version this write expects to replace"})


class SecretPatchSchema(ma.Schema):
    values = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), required=True,
                         metadata={"description": "JSON merge patch of the pairs: null removes a key"})
    cas = fields.Integer(load_default=None, strict=True, validate=validate.Range(min=0))


class VersionsQuery(ma.Schema):
    versions = DelimitedList(fields.Integer(validate=validate.Range(min=1)),
                                    metadata={"description": "comma-separated versions; default the latest"})


class VersionsSchema(ma.Schema):
    versions = fields.List(fields.Integer(strict=True, validate=validate.Range(min=1)), required=True,
                           validate=validate.Length(1, 100))


class SecretSchema(ma.Schema):
    domain = fields.String()
    name = fields.String()
    version = fields.Integer()
    created_time = fields.String()
    values = fields.Dict(keys=fields.String(), values=fields.Raw(), metadata=_VALUES_DOC)


class WriteResultSchema(ma.Schema):
    domain = fields.String()
    name = fields.String()
    version = fields.Integer()
    created_time = fields.String()


class VersionMetaSchema(ma.Schema):
    version = fields.Integer()
    created_time = fields.String()
    deletion_time = fields.String(allow_none=True)
    destroyed = fields.Boolean()


class SecretMetaSchema(ma.Schema):
    domain = fields.String()
    name = fields.String()
    created_time = fields.String()
    updated_time = fields.String()
    current_version = fields.Integer()
    oldest_version = fields.Integer()
    versions_kept = fields.Integer()
    max_versions = fields.Integer(metadata={"description": "effective maximum (secret, else domain, else service)"})
    max_versions_configured = fields.Integer(allow_none=True)
    versions = fields.List(fields.Nested(VersionMetaSchema))


class SecretConfigSchema(ma.Schema):
    max_versions = fields.Integer(required=True, allow_none=True, strict=True,
                                  validate=validate.Range(1, VERSIONS_MAX))


class SecretNamesSchema(ma.Schema):
    names = fields.List(fields.String())


class ReferenceCreateSchema(ma.Schema):
    ttl = fields.Integer(load_default=None, strict=True, validate=validate.Range(min=1),
                         metadata={"description": "seconds (default 60)"})
    version = fields.Integer(load_default=None, strict=True, validate=validate.Range(min=1))


class ReferenceSchema(ma.Schema):
    reference = fields.String(metadata={"description": "shown once; redeem with POST /v1/references/redeem"})
    domain = fields.String()
    name = fields.String()
    version = fields.Integer()
    expires_time = fields.String()
    ttl = fields.Integer()


class RedeemSchema(ma.Schema):
    reference = fields.String(required=True, validate=validate.Length(1, 128))


class CountsSchema(ma.Schema):
    class Meta:
        unknown = ma.INCLUDE

    master_key_version = fields.Integer()
    domain_keys_rewrapped = fields.Integer()
    versions_resealed = fields.Integer()
    domains_created = fields.Integer()
    secrets_restored = fields.Integer()
    secrets_skipped = fields.Integer()
    secrets_created = fields.Integer()
    secrets_updated = fields.Integer()
    secrets_unchanged = fields.Integer()


class ExportSchema(ma.Schema):
    class Meta:
        unknown = ma.INCLUDE

    format = fields.String(required=True)
    created_at = fields.Float()
    domains = fields.List(fields.Dict(), required=True)
    mac = fields.Dict(required=True)
