"""`csm cmp`: CMP profiles, requests held for approval, the confirm-timeout sweep (via the REST API).

Shared secrets are never taken from the command line (it shows in ``ps``): ``--secret REF=env:VAR``
or ``--secret REF=file:PATH``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def build_group(base: Any) -> click.Group:
    """Build the group with the base CLI's helpers (``base`` is the ``sms.cli`` module)."""
    _client, _client_options, _guarded, _out, fail = (base._client, base._client_options, base._guarded,
                                                      base._out, base.fail)

    def _secrets(specs: tuple[str, ...]) -> dict[str, str]:
        from ..errors import ConfigError
        from ..secrets.wiring import read_secret_source

        out: dict[str, str] = {}
        for spec in specs:
            ref, sep, source = spec.partition("=")
            if not sep or not ref:
                fail(f"--secret {ref or spec!r}: use REF=env:VAR or REF=file:PATH", base.EXIT_USAGE)
            try:
                out[ref] = read_secret_source(source, f"--secret {ref}")
            except ConfigError as exc:
                fail(str(exc), base.EXIT_USAGE)
        return out

    def _options(fn: Any) -> Any:
        opts = [
            click.option("--ca", help="Name of the issuing CA."),
            click.option("--cert-profile", help="Certificate profile of that CA (e.g. tls-mutual)."),
            click.option("--default/--no-default", "default", default=None,
                         help="Serve this profile at /.well-known/cmp (one profile at a time)."),
            click.option("--secret", "secrets", multiple=True, metavar="REF=SOURCE",
                         help="PBM shared secret for senderKID REF from env:VAR or file:PATH (repeatable)."),
            click.option("--trust-anchors", type=click.Path(dir_okay=False, exists=True),
                         help="PEM bundle of anchors for signature-protected requests."),
            click.option("--request-protection", type=click.Choice(["mac-or-signature", "signature", "mac", "none"])),
            click.option("--response-protection", type=click.Choice(["in-kind", "none"])),
            click.option("--implicit-confirm/--no-implicit-confirm", default=None,
                         help="Grant implicitConfirm when a client asks for it."),
            click.option("--confirm-timeout", type=click.IntRange(10, 86400),
                         help="Seconds to wait for certConf before the certificate is revoked."),
            click.option("--approval/--no-approval", "approval_required", default=None,
                         help="Hold certificate requests for an operator (clients poll)."),
            click.option("--ra-verified-pop/--no-ra-verified-pop", default=None,
                         help="Trust raVerified POP from signature-authenticated RAs."),
            click.option("--same-key-kur/--no-same-key-kur", default=None, help="Allow kur with the same key."),
            click.option("--poll-interval", type=click.IntRange(1, 3600), help="pollRep checkAfter, seconds."),
            click.option("--response-pbm-iterations", type=click.IntRange(100, 100_000),
                         help="PBM iteration count of MAC-protected responses."),
            click.option("--json", "as_json", is_flag=True, help="Print JSON."),
        ]
        for o in reversed(opts):
            fn = o(fn)
        return fn

    def _body(kw: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for k in ("ca", "cert_profile", "default", "request_protection", "response_protection", "implicit_confirm",
                  "confirm_timeout", "approval_required", "ra_verified_pop", "same_key_kur", "poll_interval",
                  "response_pbm_iterations"):
            v = kw.pop(k, None)
            if v is not None:
                body[k] = v
        anchors = kw.pop("trust_anchors", None)
        if anchors:
            body["trust_anchors"] = Path(anchors).read_text()
        secrets = _secrets(kw.pop("secrets", ()) or ())
        if secrets:
            body["secrets"] = secrets
        return body

    def _show(doc: dict[str, Any], as_json: bool) -> None:
        if not as_json:
            doc = {k: v for k, v in doc.items() if k != "trust_anchors_pem"}
            doc["trust_anchors"] = [a["subject"] for a in doc.get("trust_anchors", [])]
        _out(doc, as_json)

    @click.group("cmp")
    def cmp_group() -> None:
        """CMPv2 server: profiles (aliases) and requests held for approval (talks to the running service)."""

    @cmp_group.group("profile")
    def profile() -> None:
        """Create, list, show, update and delete CMP profiles."""

    @profile.command("create")
    @_client_options
    @click.argument("name")
    @_options
    def create_cmd(name: str, as_json: bool, **kw: Any) -> None:
        """Create CMP profile NAME, served at /.well-known/cmp/p/NAME (needs --ca and --cert-profile)."""
        body = _body(kw)
        if "ca" not in body or "cert_profile" not in body:
            fail("--ca and --cert-profile are required", base.EXIT_USAGE)
        c = _client(**kw)
        _show(_guarded(lambda: c.post("/v1/cmp/profiles", {"name": name, **body})), as_json)

    @profile.command("update")
    @_client_options
    @click.argument("name")
    @_options
    @click.option("--remove-secret", "remove", multiple=True, metavar="REF", help="Drop the secret of REF.")
    def update_cmd(name: str, as_json: bool, remove: tuple[str, ...], **kw: Any) -> None:
        """Change options of CMP profile NAME; --secret adds or replaces shared secrets."""
        body = _body(kw)
        if remove:
            body["remove_secrets"] = list(remove)
        if not body:
            fail("nothing to change", base.EXIT_USAGE)
        c = _client(**kw)
        _show(_guarded(lambda: c.patch(f"/v1/cmp/profiles/{name}", body)), as_json)

    @profile.command("list")
    @_client_options
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def list_cmd(as_json: bool, **kw: Any) -> None:
        """List CMP profiles."""
        c = _client(**kw)
        profiles = _guarded(lambda: c.get("/v1/cmp/profiles"))["profiles"]
        if as_json:
            _out(profiles, True)
            return
        for p in profiles:
            mark = " (default)" if p["default"] else ""
            click.echo(f"{p['name']}{mark}  ca={p['ca']}  cert_profile={p['cert_profile']}  "
                       f"protection={p['request_protection']}  approval={str(p['approval_required']).lower()}")

    @profile.command("show")
    @_client_options
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def show_cmd(name: str, as_json: bool, **kw: Any) -> None:
        """Show CMP profile NAME (secret references only; secrets are write-only)."""
        c = _client(**kw)
        _show(_guarded(lambda: c.get(f"/v1/cmp/profiles/{name}")), as_json)

    @profile.command("delete")
    @_client_options
    @click.argument("name")
    def delete_cmd(name: str, **kw: Any) -> None:
        """Delete CMP profile NAME with its secrets and transactions (issued certificates stay)."""
        c = _client(**kw)
        _guarded(lambda: c.delete(f"/v1/cmp/profiles/{name}"))
        click.echo(f"CMP profile {name} deleted")

    @cmp_group.group("requests")
    def requests_group() -> None:
        """Certificate requests held for approval."""

    @requests_group.command("list")
    @_client_options
    @click.option("--profile", default=None, help="Only this CMP profile.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def requests_list(profile: str | None, as_json: bool, **kw: Any) -> None:
        """List requests waiting for approval."""
        c = _client(**kw)
        reqs = _guarded(lambda: c.get("/v1/cmp/requests", params={"profile": profile} if profile else None))
        if as_json:
            _out(reqs["requests"], True)
            return
        for r in reqs["requests"]:
            who = r["requester"].get("reference") or r["requester"].get("sender") or "?"
            click.echo(f"{r['profile']}  {r['transaction_id']}  {r.get('body_type', r['request_type'])}  "
                       f"{r.get('subject', '')}  key={r.get('key', '')}  from={who}  since={r['created']}")

    @requests_group.command("approve")
    @_client_options
    @click.argument("profile")
    @click.argument("transaction_id")
    def approve_cmd(profile: str, transaction_id: str, **kw: Any) -> None:
        """Approve held request TRANSACTION_ID (hex) of PROFILE; issued when the client polls next."""
        c = _client(**kw)
        _guarded(lambda: c.post(f"/v1/cmp/requests/{profile}/{transaction_id}/approve"))
        click.echo(f"approved {transaction_id}")

    @requests_group.command("reject")
    @_client_options
    @click.argument("profile")
    @click.argument("transaction_id")
    @click.option("--reason", default="", help="Text sent to the client (statusString).")
    def reject_cmd(profile: str, transaction_id: str, reason: str, **kw: Any) -> None:
        """Reject held request TRANSACTION_ID (hex) of PROFILE."""
        c = _client(**kw)
        _guarded(lambda: c.post(f"/v1/cmp/requests/{profile}/{transaction_id}/reject", {"reason": reason}))
        click.echo(f"rejected {transaction_id}")

    @cmp_group.command("sweep")
    @_client_options
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def sweep_cmd(as_json: bool, **kw: Any) -> None:
        """Revoke certificates not confirmed in time and purge old transactions now (for cron/timers;
        the service also sweeps lazily while serving CMP)."""
        c = _client(**kw)
        _out(_guarded(lambda: c.post("/v1/cmp/sweep")), as_json)

    return cmp_group
