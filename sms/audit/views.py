"""REST: read and verify the audit log."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import fields, validate

from ..auth.policy import Capability
from ..web import guard, services

blp = Blueprint("audit", __name__, url_prefix="/v1/sys/audit", description="The hash-chained audit log")


class AuditQuery(ma.Schema):
    after = fields.Integer(load_default=0, validate=validate.Range(min=0))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


@blp.route("")
class AuditEntries(MethodView):
    @blp.arguments(AuditQuery, location="query")
    @blp.response(200)
    @guard(Capability.READ, "sys/audit", action="audit.read")
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Entries after a sequence number, oldest first."""
        return {"entries": services().audit.entries(after=query["after"], limit=query["limit"])}


@blp.route("/verify")
class AuditVerify(MethodView):
    @blp.response(200)
    @guard(Capability.READ, "sys/audit", action="audit.verify")
    def post(self) -> dict[str, Any]:
        """Verify the whole chain and every entry's token MAC."""
        r = services().audit.verify()
        return {"ok": r.ok, "entries": r.entries, "first_bad_seq": r.first_bad_seq, "problem": r.problem}
