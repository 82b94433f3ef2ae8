"""REST: tokens and policies."""
from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from ..web import current_identity, guard, services
from .policy import Capability
from .schemas import (
    NameListSchema,
    PolicySchema,
    PolicyWriteSchema,
    RenewSchema,
    TokenCreatedSchema,
    TokenCreateSchema,
    TokenInfoSchema,
    TokenListSchema,
)

tokens = Blueprint("tokens", __name__, url_prefix="/v1/auth/tokens", description="Tokens: create, look up, renew, revoke")
policies = Blueprint("policies", __name__, url_prefix="/v1/sys/policies", description="Policies (deny by default)")


@tokens.route("")
class Tokens(MethodView):
    @tokens.arguments(TokenCreateSchema)
    @tokens.response(201, TokenCreatedSchema)
    @guard(Capability.CREATE, "sys/tokens", action="token.create")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a token carrying the given policies (a caller can grant only policies it holds)."""
        token, info = services().auth.create_token(parent=current_identity(), **body)
        return {"token": token, **info.to_json()}

    @tokens.response(200, TokenListSchema)
    @guard(Capability.LIST, "sys/tokens", action="token.list")
    def get(self) -> dict[str, Any]:
        """List tokens (metadata only)."""
        return {"tokens": [t.to_json() for t in services().auth.list_tokens()]}


@tokens.route("/self")
class TokenSelf(MethodView):
    @tokens.response(200, TokenInfoSchema)
    @guard(None, "sys/tokens/self", action="token.lookup-self")
    def get(self) -> dict[str, Any]:
        """Look up the calling token."""
        ident = current_identity()
        assert ident is not None
        if ident.token is None:
            return {"accessor": "", "display_name": ident.name, "policies": [p.name for p in ident.policies],
                    "root": ident.is_root}
        return services().auth.lookup(ident.token.accessor).to_json()


@tokens.route("/self/renew")
class TokenSelfRenew(MethodView):
    @tokens.arguments(RenewSchema)
    @tokens.response(200, TokenInfoSchema)
    @guard(None, "sys/tokens/self", action="token.renew-self")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Renew the calling token (up to its maximum TTL)."""
        ident = current_identity()
        assert ident is not None and ident.token is not None
        return services().auth.renew(ident.token.accessor, body.get("increment")).to_json()


@tokens.route("/<string:accessor>")
class TokenByAccessor(MethodView):
    @tokens.response(200, TokenInfoSchema)
    @guard(Capability.READ, "sys/tokens/{accessor}", action="token.lookup")
    def get(self, accessor: str) -> dict[str, Any]:
        """Look up a token by accessor."""
        return services().auth.lookup(accessor).to_json()

    @tokens.response(204)
    @guard(Capability.DELETE, "sys/tokens/{accessor}", action="token.revoke")
    def delete(self, accessor: str) -> None:
        """Revoke a token and every token it created."""
        services().auth.revoke(accessor)


@tokens.route("/<string:accessor>/renew")
class TokenRenew(MethodView):
    @tokens.arguments(RenewSchema)
    @tokens.response(200, TokenInfoSchema)
    @guard(Capability.UPDATE, "sys/tokens/{accessor}", action="token.renew")
    def post(self, body: dict[str, Any], accessor: str) -> dict[str, Any]:
        """Renew a token by accessor (up to its maximum TTL)."""
        return services().auth.renew(accessor, body.get("increment")).to_json()


@policies.route("")
class Policies(MethodView):
    @policies.response(200, NameListSchema)
    @guard(Capability.LIST, "sys/policies", action="policy.list")
    def get(self) -> dict[str, Any]:
        """List policy names."""
        return {"names": services().auth.list_policies()}


@policies.route("/<string:name>")
class PolicyByName(MethodView):
    @policies.response(200, PolicySchema)
    @guard(Capability.READ, "sys/policies/{name}", action="policy.read")
    def get(self, name: str) -> dict[str, Any]:
        """Read a policy."""
        return services().auth.read_policy(name)

    @policies.arguments(PolicyWriteSchema)
    @policies.response(200, PolicySchema)
    @guard(Capability.UPDATE, "sys/policies/{name}", action="policy.write")
    def put(self, body: dict[str, Any], name: str) -> dict[str, Any]:
        """Create or replace a policy."""
        svc = services()
        svc.auth.write_policy(name, body["rules"])
        return svc.auth.read_policy(name)

    @policies.response(204)
    @guard(Capability.DELETE, "sys/policies/{name}", action="policy.delete")
    def delete(self, name: str) -> None:
        """Delete a policy (tokens that carry it lose its grants at once)."""
        services().auth.delete_policy(name)
