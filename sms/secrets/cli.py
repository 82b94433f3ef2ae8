"""`csm secrets`: domains, secrets, ONAP preload import, rotation, rewrap, backup (via the REST API)."""
from __future__ import annotations

import json
from typing import Any

import click



def build_group(base: Any) -> click.Group:
    """Build the group with the base CLI's helpers (``base`` is the ``sms.cli`` module; passing it
    in avoids a circular import when that module runs as ``__main__``)."""
    _client, _client_options, _guarded, _out, fail = (base._client, base._client_options, base._guarded,
                                                      base._out, base.fail)

    def _sc(kw: dict[str, Any]) -> Any:
        from client_sdk.secrets import SecretsClient

        return SecretsClient(_client(**kw))

    def _load_json(file: Any) -> Any:
        try:
            return json.load(file)
        except json.JSONDecodeError as exc:
            fail(f"{file.name}: not valid JSON ({exc.msg} at line {exc.lineno})", base.EXIT_USAGE)

    @click.group("secrets")
    def secrets_group() -> None:
        """Domains of versioned secrets (talks to the running service)."""


    @secrets_group.command("import")
    @_client_options
    @click.argument("file", type=click.File("r"))
    @click.option("--json", "as_json", is_flag=True)
    def import_cmd(file: Any, as_json: bool, **kw: Any) -> None:
        """Import an ONAP SMS preload FILE ({"domains":[{"name","secrets":[{"name","values"}]}]}); idempotent."""
        doc = _load_json(file)
        _out(_guarded(lambda: _sc(kw).import_preload(doc)), as_json)


    @secrets_group.command("export")
    @_client_options
    @click.argument("file", type=click.Path(dir_okay=False, writable=True))
    def export_cmd(file: str, **kw: Any) -> None:
        """Write an encrypted backup to FILE (restorable only where the same master key is held)."""
        import os

        doc = _guarded(lambda: _sc(kw).export())
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        click.echo(f"exported {len(doc['domains'])} domain(s) to {file}")


    @secrets_group.command("restore")
    @_client_options
    @click.argument("file", type=click.File("r"))
    @click.option("--json", "as_json", is_flag=True)
    def restore_cmd(file: Any, as_json: bool, **kw: Any) -> None:
        """Restore an export FILE (idempotent; existing secrets are left alone)."""
        doc = _load_json(file)
        _out(_guarded(lambda: _sc(kw).restore(doc)), as_json)


    @secrets_group.command("rotate-master")
    @_client_options
    @click.option("--json", "as_json", is_flag=True)
    def rotate_master_cmd(as_json: bool, **kw: Any) -> None:
        """New master key version in the token; every domain key is rewrapped under it (online)."""
        _out(_guarded(lambda: _sc(kw).rotate_master_key()), as_json)


    @secrets_group.command("rotate-domain")
    @_client_options
    @click.argument("domain")
    @click.option("--json", "as_json", is_flag=True)
    def rotate_domain_cmd(domain: str, as_json: bool, **kw: Any) -> None:
        """New data key version for DOMAIN (new writes use it; old versions stay readable)."""
        _out(_guarded(lambda: _sc(kw).rotate_domain_key(domain)), as_json)


    @secrets_group.command("rewrap")
    @_client_options
    @click.option("--json", "as_json", is_flag=True)
    def rewrap_cmd(as_json: bool, **kw: Any) -> None:
        """Rewrap every domain key under the newest master key and re-encrypt every kept version
        under its domain's newest key (online, idempotent)."""
        _out(_guarded(lambda: _sc(kw).rewrap()), as_json)


    @secrets_group.command("domains")
    @_client_options
    def domains_cmd(**kw: Any) -> None:
        """List domains."""
        for d in _guarded(lambda: _sc(kw).list_domains()):
            click.echo(d["name"])


    @secrets_group.command("create-domain")
    @_client_options
    @click.argument("domain")
    def create_domain_cmd(domain: str, **kw: Any) -> None:
        """Create DOMAIN."""
        _guarded(lambda: _sc(kw).create_domain(domain))
        click.echo(f"domain {domain} created")


    @secrets_group.command("list")
    @_client_options
    @click.argument("domain")
    def list_cmd(domain: str, **kw: Any) -> None:
        """List the secrets of DOMAIN."""
        for n in _guarded(lambda: _sc(kw).list(domain)):
            click.echo(n)


    @secrets_group.command("get")
    @_client_options
    @click.argument("domain")
    @click.argument("name")
    @click.option("--version", type=click.IntRange(min=1), default=None)
    def get_cmd(domain: str, name: str, version: int | None, **kw: Any) -> None:
        """Print a secret's values as JSON."""
        click.echo(json.dumps(_guarded(lambda: _sc(kw).read(domain, name, version))["values"], indent=2))


    @secrets_group.command("put")
    @_client_options
    @click.argument("domain")
    @click.argument("name")
    @click.argument("file", type=click.File("r"), default="-")
    @click.option("--cas", type=click.IntRange(min=0), default=None, help="Expected current version (check-and-set).")
    def put_cmd(domain: str, name: str, file: Any, cas: int | None, **kw: Any) -> None:
        """Write a secret from a JSON object in FILE (default stdin); creates it if missing."""
        from client_sdk.errors import NotFound

        values = _load_json(file)
        sc = _sc(kw)

        def write() -> Any:
            try:
                return sc.update(domain, name, values, cas=cas)
            except NotFound:
                return sc.create(domain, name, values)

        click.echo(f"{domain}/{name} version {_guarded(write)['version']}")

    return secrets_group
