"""The `csm` command line: init, serve, status, token, policy, audit, tls, config.

Every verb has --help; errors are one line on stderr with a non-zero exit code
(1 = the operation failed, 2 = usage error, 3 = the service is unreachable or not ready).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from .config import SETTINGS, Settings, env_name, flag_name, load_settings, usable_cpus

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"csm: error: {message}", err=True)
    sys.exit(code)


def settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add one option per setting (flag > CSM_* env > config file > default)."""
    for f in reversed(SETTINGS):
        kind = f.metadata["kind"]
        help_text = f"{f.metadata['help']} [env {env_name(f.name)}]"
        if kind is bool:
            opt = click.option(f"{flag_name(f.name)}/--no-{f.name.replace('_', '-')}", f.name, default=None,
                               help=help_text)
        else:
            ctype: Any = click.Choice(f.metadata["choices"]) if f.metadata["choices"] else kind
            opt = click.option(flag_name(f.name), f.name, type=ctype, default=None, help=help_text)
        fn = opt(fn)
    return click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
                        help="TOML config file [env CSM_CONFIG; default <data_dir>/csm.toml if present]")(fn)


def _settings(kwargs: dict[str, Any]) -> Settings:
    from .errors import ConfigError

    cli = {k: kwargs.pop(k) for k in list(kwargs) if k in {f.name for f in SETTINGS} or k == "config"}
    try:
        return load_settings(cli)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def _guarded(fn: Callable[[], Any]) -> Any:
    """Run fn, turning the project's errors into one-line messages."""
    import hsm
    from client_sdk.errors import CsmApiError, TransportError

    from .errors import CsmError

    try:
        return fn()
    except TransportError as exc:
        fail(exc.detail, EXIT_UNAVAILABLE)
    except CsmApiError as exc:
        fail(exc.detail or exc.title or str(exc))
    except (CsmError, hsm.HsmError) as exc:
        fail(str(exc) or type(exc).__name__)
    except OSError as exc:
        fail(f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}".rstrip(": "))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="csm")
def main() -> None:
    """csm: certificate and secret management with every key held in a hardware token."""


# ---- init / serve / status ----------------------------------------------------------------
@main.command()
@settings_options
def init(**kwargs: Any) -> None:
    """Create the data directory, token, schema, service keys, root token and TLS files (idempotent)."""
    from .bootstrap import run_init
    from .logging_setup import configure_logging

    settings = _settings(kwargs)
    configure_logging("WARNING")
    result, svc = _guarded(lambda: run_init(settings, progress=lambda m: click.echo(f"  {m}")))
    svc.keystore.close()
    click.echo(f"initialised {result.data_dir} (token PIN: {result.pin_protection})")


@main.command()
@settings_options
def serve(**kwargs: Any) -> None:
    """Initialise if needed, then run the production WSGI server (granian or gunicorn)."""
    settings = _settings(kwargs)
    # Initialise in a child process so this (master) process never loads the PKCS#11
    # module: workers open their own context after the fork.
    env = dict(os.environ, CSM_EFFECTIVE_SETTINGS=settings.to_json())
    proc = subprocess.run([sys.executable, "-m", "sms.cli", "_init-effective"], env=env, check=False)
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    os.environ["CSM_EFFECTIVE_SETTINGS"] = settings.to_json()
    from .server import run_server

    click.echo(f"csm listening on {settings.url}/  (OpenAPI UI: {settings.url}/v1/openapi/ui)")
    click.echo(f"  root token: {settings.root_token_path}" + ("" if settings.plain_http else
               f"   CA certificate: {settings.tls_dir / 'ca.crt'}"))
    click.echo(f"  {settings.effective_workers} workers x {settings.threads} threads on {usable_cpus()} CPUs"
               + ("  (workers = 0: one more than the CPUs, measured; see README Configuration)"
                  if settings.workers == 0 else ""))
    sys.stdout.flush()
    _guarded(lambda: run_server(settings))


@main.command("_init-effective", hidden=True)
def _init_effective() -> None:
    from .bootstrap import run_init
    from .logging_setup import configure_logging

    settings = Settings.from_json(os.environ["CSM_EFFECTIVE_SETTINGS"])
    configure_logging("WARNING")
    result, svc = _guarded(lambda: run_init(settings, progress=lambda m: click.echo(f"  {m}")))
    svc.keystore.close()
    if "file" in result.pin_protection and result.created_token:
        click.echo("  WARNING: no TPM found; the token PIN is kept in a 0600 file "
                   "(set CSM_HSM_TPM_TCTI to seal it to a TPM)")


def _client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--addr", envvar="CSM_ADDR", default=None, help="Service URL [env CSM_ADDR; default from settings]")(fn)
    fn = click.option("--token-file", envvar="CSM_TOKEN_FILE", type=click.Path(dir_okay=False), default=None,
                      help="File holding the token [env CSM_TOKEN_FILE; default <data_dir>/root-token]")(fn)
    fn = click.option("--ca-cert", envvar="CSM_CA_CERT", type=click.Path(dir_okay=False), default=None,
                      help="CA certificate to verify the service [env CSM_CA_CERT; default <data_dir>/tls/ca.crt]")(fn)
    fn = click.option("--data-dir", "data_dir", default=None, help="Data directory [env CSM_DATA_DIR]")(fn)
    return fn


def _client(addr: str | None, token_file: str | None, ca_cert: str | None, data_dir: str | None,
            need_token: bool = True) -> Any:
    from client_sdk import CsmClient

    settings = _settings({"data_dir": data_dir})
    token = os.environ.get("CSM_TOKEN")
    if token is None and need_token:
        path = Path(token_file) if token_file else settings.root_token_path
        try:
            token = path.read_text().strip()
        except OSError:
            fail(f"no token: set CSM_TOKEN or --token-file (cannot read {path})", EXIT_USAGE)
    ca = ca_cert or (str(settings.tls_dir / "ca.crt") if (settings.tls_dir / "ca.crt").exists() else None)
    return CsmClient(addr or settings.url, token=token, ca_cert=ca)


def _out(data: Any, as_json: bool) -> None:
    if as_json or not isinstance(data, dict):
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    width = max((len(k) for k in data), default=0)
    for k, v in data.items():
        click.echo(f"{k.ljust(width)}  {json.dumps(v) if isinstance(v, (list, dict)) else v}")


@main.command()
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(addr: str | None, token_file: str | None, ca_cert: str | None, data_dir: str | None, as_json: bool) -> None:
    """Show readiness of the running service (database, token, sealed). Exit 3 when not ready."""
    c = _client(addr, token_file, ca_cert, data_dir, need_token=False)
    report = _guarded(c.ready)
    _out(report, as_json)
    if report.get("status") != "ready":
        sys.exit(EXIT_UNAVAILABLE)


# ---- tokens --------------------------------------------------------------------------------
@main.group()
def token() -> None:
    """Create, look up, renew and revoke tokens (talks to the running service)."""


@token.command("create")
@_client_options
@click.option("--policy", "-p", "policies", multiple=True, help="Policy to attach (repeatable).")
@click.option("--ttl", type=click.IntRange(min=1), default=None, help="TTL in seconds.")
@click.option("--max-ttl", type=click.IntRange(min=1), default=None, help="Maximum lifetime in seconds.")
@click.option("--display-name", default="", help="A name shown in lookups and audit.")
@click.option("--json", "as_json", is_flag=True)
def token_create(policies: tuple[str, ...], ttl: int | None, max_ttl: int | None, display_name: str,
                 as_json: bool, **kw: Any) -> None:
    """Create a token; it is printed once."""
    c = _client(**kw)
    _out(_guarded(lambda: c.create_token(list(policies), ttl=ttl, max_ttl=max_ttl, display_name=display_name)), as_json)


@token.command("lookup")
@_client_options
@click.argument("accessor", required=False)
@click.option("--json", "as_json", is_flag=True)
def token_lookup(accessor: str | None, as_json: bool, **kw: Any) -> None:
    """Look up a token by accessor (or the calling token)."""
    c = _client(**kw)
    _out(_guarded(lambda: c.lookup_token(accessor)), as_json)


@token.command("renew")
@_client_options
@click.argument("accessor", required=False)
@click.option("--increment", type=click.IntRange(min=1), default=None, help="Seconds to extend by.")
@click.option("--json", "as_json", is_flag=True)
def token_renew(accessor: str | None, increment: int | None, as_json: bool, **kw: Any) -> None:
    """Renew a token by accessor (or the calling token), up to its maximum TTL."""
    c = _client(**kw)
    _out(_guarded(lambda: c.renew_token(accessor, increment)), as_json)


@token.command("revoke")
@_client_options
@click.argument("accessor")
def token_revoke(accessor: str, **kw: Any) -> None:
    """Revoke a token (and the tokens it created) by accessor."""
    c = _client(**kw)
    _guarded(lambda: c.revoke_token(accessor))
    click.echo(f"revoked {accessor}")


# ---- policies ------------------------------------------------------------------------------
@main.group()
def policy() -> None:
    """Write, read, list and delete policies (talks to the running service)."""


@policy.command("write")
@_client_options
@click.argument("name")
@click.argument("file", type=click.File("r"))
def policy_write(name: str, file: Any, **kw: Any) -> None:
    """Create or replace policy NAME from a JSON FILE ('-' = stdin): [{"path": ..., "capabilities": [...]}]."""
    try:
        doc = json.load(file)
    except json.JSONDecodeError as exc:
        fail(f"{file.name}: not valid JSON ({exc.msg} at line {exc.lineno})", EXIT_USAGE)
    rules = doc.get("rules") if isinstance(doc, dict) else doc
    c = _client(**kw)
    _guarded(lambda: c.write_policy(name, rules))
    click.echo(f"policy {name} written")


@policy.command("read")
@_client_options
@click.argument("name")
def policy_read(name: str, **kw: Any) -> None:
    """Print a policy as JSON."""
    c = _client(**kw)
    click.echo(json.dumps(_guarded(lambda: c.read_policy(name)), indent=2))


@policy.command("list")
@_client_options
def policy_list(**kw: Any) -> None:
    """List policy names."""
    c = _client(**kw)
    for n in _guarded(c.list_policies):
        click.echo(n)


@policy.command("delete")
@_client_options
@click.argument("name")
def policy_delete(name: str, **kw: Any) -> None:
    """Delete a policy."""
    c = _client(**kw)
    _guarded(lambda: c.delete_policy(name))
    click.echo(f"policy {name} deleted")


# ---- local administration (needs the data directory and the token) -------------------------
def _local_services(kwargs: dict[str, Any]) -> Any:
    from .runtime import build_services, prepare_module_env

    settings = _settings(kwargs)
    if not settings.data_path.exists():
        fail(f"{settings.data_path} does not exist: run `csm init` first", EXIT_USAGE)
    prepare_module_env(settings)
    return build_services(settings)


@main.group()
def audit() -> None:
    """Inspect the hash-chained audit log."""


@audit.command("verify")
@settings_options
def audit_verify(**kwargs: Any) -> None:
    """Fold the workers' audit journals into the chain, then verify every entry's hash, chain
    link and token MAC. Exit 1 on the first bad entry."""
    svc = _local_services(kwargs)
    shown = [0]

    def progress(n: int) -> None:
        if n - shown[0] >= 5000:
            shown[0] = n
            click.echo(f"  verified {n} entries…", err=True)

    report = _guarded(lambda: svc.audit.verify(progress))
    svc.keystore.close()
    if report.ok:
        click.echo(f"audit log OK: {report.entries} entries")
    else:
        fail(f"audit log TAMPERED: {report.problem}")


@main.group()
def tls() -> None:
    """The TLS server certificate (its key is the one key kept as a file, mode 0600)."""


@tls.command("reissue")
@settings_options
def tls_reissue(**kwargs: Any) -> None:
    """Issue a new server key and certificate now, from CA tls_ca when set (restart `csm serve` to use them)."""
    from .tls import ensure_service_cert

    svc = _local_services(kwargs)
    files = _guarded(lambda: ensure_service_cert(svc.settings, svc, force=True))
    svc.keystore.close()
    click.echo(f"issued {files.cert} (key {files.key}, mode 0600), valid until {files.not_after:%Y-%m-%d %H:%M} UTC")


@main.group("config")
def config_group() -> None:
    """Show configuration."""


@config_group.command("show")
@settings_options
def config_show(**kwargs: Any) -> None:
    """Print the effective settings (flags > CSM_* env > config file > defaults) as JSON."""
    click.echo(json.dumps(json.loads(_settings(kwargs).to_json()), indent=2, sort_keys=True))


@config_group.command("table", hidden=True)
def config_table() -> None:
    from .config import settings_table_markdown

    click.echo(settings_table_markdown())


from .secrets.cli import build_group as _secrets_group  # noqa: E402 - feature verbs register after main exists

main.add_command(_secrets_group(sys.modules[__name__]))

from .ca.cli import build_group as _ca_group  # noqa: E402

main.add_command(_ca_group(sys.modules[__name__]))

from .cmp.cli import build_group as _cmp_group  # noqa: E402

main.add_command(_cmp_group(sys.modules[__name__]))


if __name__ == "__main__":
    main()
