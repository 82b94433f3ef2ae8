"""`csm ca`: CAs, profiles, signing, revocation, CRL and usage reports (via the REST API, like
`csm secrets`; the token comes from --token-file / CSM_TOKEN, default the root token).

Secrets never come from the command line (it shows in ``ps``): an imported key's password is
read with ``--password-file`` or ``--password-env``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
REASONS = ("unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
           "cessationOfOperation", "certificateHold", "privilegeWithdrawn", "aACompromise")


def build_group(base: Any) -> click.Group:
    """Build the group with the base CLI's helpers (``base`` is the ``sms.cli`` module)."""
    _client, _client_options, _guarded, _out, fail = (base._client, base._client_options, base._guarded,
                                                      base._out, base.fail)

    def _read(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            fail(f"cannot read {what} {path}: {exc.strerror}", base.EXIT_USAGE)

    def _text(data: bytes) -> str:
        """PEM stays text; DER goes as base64 (the API accepts both)."""
        import base64

        return data.decode() if data.lstrip().startswith(b"-----BEGIN") else base64.b64encode(data).decode()

    def _create(kw: dict[str, Any], body: dict[str, Any], as_json: bool) -> None:
        c = _client(**kw)
        doc = _guarded(lambda: c.post("/v1/ca", {k: v for k, v in body.items() if v is not None}))
        if as_json:
            _out(doc, True)
        else:
            click.echo(f"created CA {doc['name']}: {doc['subject']} ({doc['key_type']}, key {doc['key_label']} "
                       f"in the token), valid until {doc['not_after']}")

    def _ca_options(fn: Any) -> Any:
        for o in reversed([
            click.option("--key-type", type=click.Choice(KEY_TYPES), default="ec-p256", show_default=True),
            click.option("--days", "validity_days", type=click.IntRange(1, 36500), default=None,
                         help="Lifetime in days [root 3650, intermediate 1825]."),
            click.option("--path-length", type=click.IntRange(0, 16), default=None),
            click.option("--no-builtin-profiles", is_flag=True, help="Do not install tls-server/tls-client/tls-mutual."),
            click.option("--json", "as_json", is_flag=True, help="Print JSON."),
        ]):
            fn = o(fn)
        return fn

    @click.group("ca")
    def ca_group() -> None:
        """Certificate authorities whose keys live in the token (talks to the running service)."""

    @ca_group.command("init")
    @_client_options
    @click.argument("name")
    @click.option("--subject", required=True, help="RFC 4514 subject, e.g. 'CN=Acme Root CA,O=Acme'.")
    @_ca_options
    def init_cmd(name: str, subject: str, key_type: str, validity_days: int | None, path_length: int | None,
                 no_builtin_profiles: bool, as_json: bool, **kw: Any) -> None:
        """Create root CA NAME: key generated in the token (EC P-256/P-384 or RSA 2048-4096), self-signed."""
        _create(kw, {"type": "root", "name": name, "subject": subject, "key_type": key_type,
                     "validity_days": validity_days, "path_length": path_length,
                     "builtin_profiles": not no_builtin_profiles}, as_json)

    @ca_group.command("intermediate")
    @_client_options
    @click.argument("name")
    @click.option("--parent", required=True, help="The CA that signs the new one.")
    @click.option("--subject", required=True, help="RFC 4514 subject.")
    @_ca_options
    def intermediate_cmd(name: str, parent: str, subject: str, key_type: str, validity_days: int | None,
                         path_length: int | None, no_builtin_profiles: bool, as_json: bool, **kw: Any) -> None:
        """Create intermediate CA NAME signed by PARENT (key generated in the token)."""
        _create(kw, {"type": "intermediate", "name": name, "parent": parent, "subject": subject,
                     "key_type": key_type, "validity_days": validity_days, "path_length": path_length,
                     "builtin_profiles": not no_builtin_profiles}, as_json)

    @ca_group.command("import")
    @_client_options
    @click.argument("name")
    @click.option("--cert", "cert_file", required=True, type=click.Path(dir_okay=False, exists=True),
                  help="CA certificate (PEM or DER).")
    @click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False, exists=True),
                  help="Private key (PEM or DER, PKCS#8 or traditional, optionally encrypted).")
    @click.option("--chain", "chain_file", type=click.Path(dir_okay=False, exists=True),
                  help="PEM bundle of the issuers above it.")
    @click.option("--parent", help="The csm CA that issued it (instead of --chain).")
    @click.option("--password-file", type=click.Path(dir_okay=False, exists=True), help="File holding the key's password.")
    @click.option("--password-env", metavar="VAR", help="Environment variable holding the key's password.")
    @click.option("--no-builtin-profiles", is_flag=True)
    @click.option("--json", "as_json", is_flag=True)
    def import_cmd(name: str, cert_file: str, key_file: str, chain_file: str | None, parent: str | None,
                   password_file: str | None, password_env: str | None, no_builtin_profiles: bool, as_json: bool,
                   **kw: Any) -> None:
        """Import an admin-made CA: the key becomes a non-extractable token object (delete KEY afterwards)."""
        password = None
        if password_file:
            password = _read(password_file, "password file").decode().strip()
        elif password_env:
            password = os.environ.get(password_env)
            if not password:
                fail(f"environment variable {password_env} is not set", base.EXIT_USAGE)
        _create(kw, {"type": "import", "name": name, "certificate": _text(_read(cert_file, "certificate")),
                     "private_key": _text(_read(key_file, "key")), "password": password, "parent": parent,
                     "chain": _text(_read(chain_file, "chain")) if chain_file else None,
                     "builtin_profiles": not no_builtin_profiles}, as_json)
        click.echo(f"the key is in the token now; delete {key_file} when you no longer need it", err=True)

    @ca_group.command("list")
    @_client_options
    @click.option("--json", "as_json", is_flag=True)
    def list_cmd(as_json: bool, **kw: Any) -> None:
        """List the CAs."""
        c = _client(**kw)
        cas = _guarded(lambda: c.get("/v1/ca"))["cas"]
        if as_json:
            _out(cas, True)
            return
        for ca in cas:
            kind = "root" if ca["root"] else f"under {ca['parent'] or '(external)'}"
            click.echo(f"{ca['name']:<24} {ca['key_type']:<9} {kind:<20} until {ca['not_after']}  {ca['subject']}")

    @ca_group.command("sign")
    @_client_options
    @click.argument("csr", type=click.Path(dir_okay=False, exists=True))
    @click.option("--ca", "ca_name", required=True, help="Issuing CA.")
    @click.option("--profile", required=True, help="Certificate profile of that CA.")
    @click.option("--days", "validity_days", type=click.IntRange(1, 36500), default=None,
                  help="Lifetime in days [the profile's default].")
    @click.option("--format", "fmt", type=click.Choice(["pem", "der", "p7b"]), default="pem", show_default=True)
    @click.option("--out", type=click.Path(dir_okay=False, writable=True), help="Write here instead of stdout.")
    def sign_cmd(csr: str, ca_name: str, profile: str, validity_days: int | None, fmt: str, out: str | None,
                 **kw: Any) -> None:
        """Sign the PKCS#10 request CSR (PEM or DER); prints the certificate and chain."""
        c = _client(**kw)
        params: dict[str, Any] = {"profile": profile, "format": fmt}
        if validity_days:
            params["validity_days"] = validity_days
        resp = _guarded(lambda: c.request("POST", f"/v1/ca/{ca_name}/sign", params=params,
                                          data=_read(csr, "CSR"),
                                          headers={"Content-Type": "application/pkcs10"}))
        serial = resp.headers.get("X-Certificate-Serial", "?")
        if out:
            Path(out).write_bytes(resp.content)
            click.echo(f"issued serial {serial} -> {out}", err=True)
        elif fmt == "pem":
            click.echo(resp.text, nl=False)
            click.echo(f"issued serial {serial}", err=True)
        else:
            click.get_binary_stream("stdout").write(resp.content)

    @ca_group.command("revoke")
    @_client_options
    @click.argument("serial")
    @click.option("--ca", "ca_name", required=True, help="The CA that issued it.")
    @click.option("--reason", type=click.Choice(REASONS, case_sensitive=False), default="unspecified",
                  show_default=True, help="RFC 5280 reason.")
    @click.option("--json", "as_json", is_flag=True)
    def revoke_cmd(serial: str, ca_name: str, reason: str, as_json: bool, **kw: Any) -> None:
        """Revoke certificate SERIAL (hex); the CA's CRL is re-signed at once."""
        c = _client(**kw)
        doc = _guarded(lambda: c.post(f"/v1/ca/{ca_name}/certs/{serial}/revoke", {"reason": reason}))
        if as_json:
            _out(doc, True)
        else:
            click.echo(f"revoked {doc['serial']} ({doc['revocation']['reason']})")

    @ca_group.command("release-hold")
    @_client_options
    @click.argument("serial")
    @click.option("--ca", "ca_name", required=True, help="The CA that issued it.")
    @click.option("--json", "as_json", is_flag=True)
    def release_hold_cmd(serial: str, ca_name: str, as_json: bool, **kw: Any) -> None:
        """Release certificate SERIAL (hex) from a certificateHold: valid again, off the next
        CRL (re-signed at once), OCSP good."""
        c = _client(**kw)
        doc = _guarded(lambda: c.post(f"/v1/ca/{ca_name}/certs/{serial}/release-hold", {}))
        if as_json:
            _out(doc, True)
        else:
            click.echo(f"released {doc['serial']} (status {doc['status']})")

    @ca_group.command("crl")
    @_client_options
    @click.argument("ca_name", metavar="CA")
    @click.option("--der", is_flag=True, help="DER instead of PEM.")
    @click.option("--out", type=click.Path(dir_okay=False, writable=True), help="Write here instead of stdout.")
    def crl_cmd(ca_name: str, der: bool, out: str | None, **kw: Any) -> None:
        """Fetch CA's current CRL (re-signed if a revocation happened or nextUpdate is near)."""
        c = _client(**kw)
        resp = _guarded(lambda: c.request("GET", f"/v1/ca/{ca_name}/crl.{'der' if der else 'pem'}"))
        if out:
            Path(out).write_bytes(resp.content)
            click.echo(f"CRL #{resp.headers.get('X-CRL-Number', '?')} -> {out}", err=True)
        elif der:
            click.get_binary_stream("stdout").write(resp.content)
        else:
            click.echo(resp.text, nl=False)

    @ca_group.command("report")
    @_client_options
    @click.option("--ca", "ca_name", help="Only this CA.")
    @click.option("--expiring-days", type=click.IntRange(0, 36500), default=30, show_default=True)
    @click.option("--csv", "as_csv", is_flag=True, help="CSV (one row per group, counter and usage statement).")
    @click.option("--json", "as_json", is_flag=True)
    def report_cmd(ca_name: str | None, expiring_days: int, as_csv: bool, as_json: bool, **kw: Any) -> None:
        """Usage report: issued / renewed / revoked / expiring per CA, profile and requester;
        signatures per CA key; clients' usage statements."""
        c = _client(**kw)
        params: dict[str, Any] = {"expiring_days": expiring_days, "format": "csv" if as_csv else "json"}
        if ca_name:
            params["ca"] = ca_name
        resp = _guarded(lambda: c.request("GET", "/v1/ca/report", params=params))
        if as_csv:
            click.echo(resp.text, nl=False)
            return
        doc = resp.json()
        if as_json:
            _out(doc, True)
            return
        click.echo(f"{'CA':<20} {'PROFILE':<16} {'REQUESTER':<36} {'ISSUED':>6} {'RENEWED':>7} {'REVOKED':>7} "
                   f"{'EXPIRING':>8}")
        for r in doc["issuance"]:
            click.echo(f"{r['ca']:<20} {r['profile']:<16} {r['requester'][:36]:<36} {r['issued']:>6} "
                       f"{r['renewed']:>7} {r['revoked']:>7} {r['expiring']:>8}")
        click.echo(f"\n{'CA':<20} {'KEY':<36} {'KIND':<12} {'SIGNATURES':>10}")
        for s in doc["signatures"]:
            click.echo(f"{s['ca']:<20} {s['key_label'][:36]:<36} {s['kind']:<12} {s['count']:>10}")
        if doc["usage"]:
            click.echo(f"\n{'SERIAL':<42} {'HOST':<24} {'IN USE':<6} DETAIL")
            for u in doc["usage"]:
                click.echo(f"{u['serial']:<42} {u['host'][:24]:<24} {'yes' if u['in_use'] else 'no':<6} {u['detail']}")

    @ca_group.group("profile")
    def profile_group() -> None:
        """Certificate profiles of a CA (JSON documents; see `csm ca profile show`)."""

    @profile_group.command("list")
    @_client_options
    @click.argument("ca_name", metavar="CA")
    def profile_list(ca_name: str, **kw: Any) -> None:
        """List CA's profiles."""
        c = _client(**kw)
        for p in _guarded(lambda: c.get(f"/v1/ca/{ca_name}/profiles"))["profiles"]:
            click.echo(f"{p['name']:<20} {p['description']}")

    @profile_group.command("show")
    @_client_options
    @click.argument("ca_name", metavar="CA")
    @click.argument("name")
    def profile_show(ca_name: str, name: str, **kw: Any) -> None:
        """Print profile NAME of CA as JSON (edit it and `put` it back)."""
        c = _client(**kw)
        click.echo(json.dumps(_guarded(lambda: c.get(f"/v1/ca/{ca_name}/profiles/{name}")), indent=2))

    @profile_group.command("put")
    @_client_options
    @click.argument("ca_name", metavar="CA")
    @click.argument("name")
    @click.argument("file", type=click.File("r"))
    def profile_put(ca_name: str, name: str, file: Any, **kw: Any) -> None:
        """Create or replace profile NAME of CA from a JSON FILE ('-' = stdin)."""
        try:
            doc = json.load(file)
        except json.JSONDecodeError as exc:
            fail(f"{file.name}: not valid JSON ({exc.msg} at line {exc.lineno})", base.EXIT_USAGE)
        c = _client(**kw)
        _guarded(lambda: c.put(f"/v1/ca/{ca_name}/profiles/{name}", doc))
        click.echo(f"profile {name} of {ca_name} written")

    @profile_group.command("delete")
    @_client_options
    @click.argument("ca_name", metavar="CA")
    @click.argument("name")
    def profile_delete(ca_name: str, name: str, **kw: Any) -> None:
        """Delete profile NAME of CA."""
        c = _client(**kw)
        _guarded(lambda: c.request("DELETE", f"/v1/ca/{ca_name}/profiles/{name}"))
        click.echo(f"profile {name} of {ca_name} deleted")

    @ca_group.group("ocsp-responder")
    def responder_group() -> None:
        """The delegated OCSP responder that signs a CA's OCSP answers (else the CA key does)."""

    def _responder_out(doc: dict[str, Any], as_json: bool, verb: str) -> None:
        if as_json:
            _out(doc, True)
        else:
            click.echo(f"{verb} OCSP responder of {doc['ca']}: serial {doc['serial']}, {doc['subject']}, "
                       f"key {doc['key_label']} in the token, valid until {doc['not_after']}")

    @responder_group.command("issue")
    @_client_options
    @click.argument("ca_name", metavar="CA")
    @click.option("--days", "validity_days", type=click.IntRange(1, 366), default=30, show_default=True,
                  help="Lifetime of the responder certificate (clamped to the CA's).")
    @click.option("--json", "as_json", is_flag=True)
    def responder_issue(ca_name: str, validity_days: int, as_json: bool, **kw: Any) -> None:
        """Issue a responder for CA (key generated in the token) and let it sign the CA's OCSP
        answers; a previous responder is replaced and its key destroyed."""
        c = _client(**kw)
        doc = _guarded(lambda: c.post(f"/v1/ca/{ca_name}/ocsp-responder", {"validity_days": validity_days}))
        _responder_out(doc, as_json, "issued")

    @responder_group.command("show")
    @_client_options
    @click.argument("ca_name", metavar="CA")
    @click.option("--json", "as_json", is_flag=True)
    def responder_show(ca_name: str, as_json: bool, **kw: Any) -> None:
        """Show CA's responder (exit 1 with a message when the CA key signs its answers)."""
        c = _client(**kw)
        doc = _guarded(lambda: c.get(f"/v1/ca/{ca_name}/ocsp-responder"))
        _responder_out(doc, as_json, "the")

    @responder_group.command("remove")
    @_client_options
    @click.argument("ca_name", metavar="CA")
    def responder_remove(ca_name: str, **kw: Any) -> None:
        """Let the CA key sign CA's OCSP answers again (the responder's key is destroyed)."""
        c = _client(**kw)
        _guarded(lambda: c.request("DELETE", f"/v1/ca/{ca_name}/ocsp-responder"))
        click.echo(f"the key of CA {ca_name} signs its OCSP answers again")

    return ca_group
