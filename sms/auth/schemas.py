from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate


class TokenCreateSchema(ma.Schema):
    policies = fields.List(fields.String(validate=validate.Length(1, 64)), load_default=list,
                           validate=validate.Length(max=64))
    ttl = fields.Integer(load_default=None, strict=True, validate=validate.Range(min=1))
    max_ttl = fields.Integer(load_default=None, strict=True, validate=validate.Range(min=1))
    display_name = fields.String(load_default="", validate=validate.Length(max=128))
    renewable = fields.Boolean(load_default=True)


class TokenInfoSchema(ma.Schema):
    accessor = fields.String()
    display_name = fields.String()
    policies = fields.List(fields.String())
    root = fields.Boolean()
    created_at = fields.Integer()
    expires_at = fields.Integer()
    max_expires_at = fields.Integer()
    ttl = fields.Integer()
    renewable = fields.Boolean()
    revoked = fields.Boolean()


class TokenCreatedSchema(TokenInfoSchema):
    token = fields.String(metadata={"description": "The token. Shown only in this response."})


class RenewSchema(ma.Schema):
    increment = fields.Integer(load_default=None, strict=True, validate=validate.Range(min=1))


class RuleSchema(ma.Schema):
    path = fields.String(required=True, validate=validate.Length(1, 512))
    capabilities = fields.List(fields.String(), required=True, validate=validate.Length(min=1, max=16))


class PolicyWriteSchema(ma.Schema):
    rules = fields.List(fields.Nested(RuleSchema), required=True, validate=validate.Length(min=1, max=256))


class PolicySchema(ma.Schema):
    name = fields.String()
    rules = fields.List(fields.Nested(RuleSchema))
    version = fields.Integer()
    created_at = fields.Integer()
    updated_at = fields.Integer()


class NameListSchema(ma.Schema):
    names = fields.List(fields.String())


class TokenListSchema(ma.Schema):
    tokens = fields.List(fields.Nested(TokenInfoSchema))
