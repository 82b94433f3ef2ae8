"""Import of ONAP SMS preload files: ``{"domains":[{"name":…,"secrets":[{"name":…,"values":{…}}]}]}``.

Idempotent: a missing domain is created, a missing secret is created, a secret whose latest
values differ gets a new version, and an identical one is left alone (no new version). As
in ONAP's preload (after 0cf377f), secrets are uploaded even when the domain exists. Names
are trimmed as ONAP did. The whole file is validated before anything is written.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import DomainNotFound, InvalidValues, SecretNotFound, VersionNotFound
from .limits import check_name, check_values
from .service import SecretsService
from .store import WriteMode

# (policy path, capability name) -> None or raises PermissionDenied
Authorize = Callable[[str, str], None]


def parse_preload(doc: Any) -> list[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    if not isinstance(doc, dict) or set(doc) != {"domains"} or not isinstance(doc["domains"], list):
        raise InvalidValues('a preload file is {"domains": [{"name": …, "secrets": [{"name": …, "values": {…}}]}]}')
    out = []
    for i, d in enumerate(doc["domains"]):
        if not isinstance(d, dict) or "name" not in d or set(d) - {"name", "secrets"}:
            raise InvalidValues(f"domains[{i}] must have a name and optionally secrets")
        dname = check_name(d["name"].strip() if isinstance(d["name"], str) else d["name"], kind="domain")
        secrets = d.get("secrets") or []
        if not isinstance(secrets, list):
            raise InvalidValues(f"domains[{i}].secrets must be a list")
        items = []
        for j, s in enumerate(secrets):
            if not isinstance(s, dict) or set(s) != {"name", "values"}:
                raise InvalidValues(f"domains[{i}].secrets[{j}] must have exactly name and values")
            sname = check_name(s["name"].strip() if isinstance(s["name"], str) else s["name"])
            items.append((sname, check_values(s["values"])))
        out.append((dname, items))
    return out


def import_preload(ss: SecretsService, doc: Any, authorize: Authorize | None = None) -> dict[str, int]:
    allow = authorize or (lambda _p, _c: None)
    plan = parse_preload(doc)
    counts = {"domains_created": 0, "secrets_created": 0, "secrets_updated": 0, "secrets_unchanged": 0}
    for dname, items in plan:
        try:
            ss.get_domain(dname)
        except DomainNotFound:
            allow(f"secrets/{dname}", "create")
            ss.create_domain(dname)
            counts["domains_created"] += 1
        for sname, values in items:
            path = f"secrets/{dname}/{sname}"
            try:
                allow(path, "read")
                current = ss.read(dname, sname)
            except (SecretNotFound, VersionNotFound):
                current = None
            if current is None:
                allow(path, "create")
                ss.write(dname, sname, values, mode=WriteMode.UPSERT)
                counts["secrets_created"] += 1
            elif current.values == values and all(type(current.values[k]) is type(v) for k, v in values.items()):
                counts["secrets_unchanged"] += 1
            else:
                allow(path, "update")
                ss.write(dname, sname, values, mode=WriteMode.UPDATE, cas=current.meta.current_version)
                counts["secrets_updated"] += 1
    return counts
