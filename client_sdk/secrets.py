"""Secrets API of csm (domains, versioned secrets, references, rotation, backup).

    from client_sdk import CsmClient
    from client_sdk.secrets import SecretsClient
    s = SecretsClient(CsmClient("https://127.0.0.1:8443", token=..., ca_cert="csm-data/tls/ca.crt"))
    s.create_domain("billing")
    s.create("billing", "db", {"user": "app", "password": "…"})
    s.read("billing", "db")["values"]

HTTP contract: the methods map 1:1 to ``/v1/domains/...`` routes; errors are the typed
exceptions of :mod:`client_sdk.errors` (Conflict for a stale check-and-set, NotFound, ...).
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .client import CsmClient


def _q(name: str) -> str:
    return quote(name, safe="")


class SecretsClient:
    def __init__(self, client: CsmClient) -> None:
        self.c = client

    # ---- domains ---------------------------------------------------------------------
    def create_domain(self, name: str, *, max_versions: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name}
        if max_versions is not None:
            body["max_versions"] = max_versions
        return self.c.post("/v1/domains", body)  # type: ignore[no-any-return]

    def list_domains(self) -> list[dict[str, Any]]:
        return self.c.get("/v1/domains")["domains"]  # type: ignore[no-any-return]

    def read_domain(self, name: str) -> dict[str, Any]:
        return self.c.get(f"/v1/domains/{_q(name)}")  # type: ignore[no-any-return]

    def delete_domain(self, name: str, *, force: bool = False) -> None:
        self.c.delete(f"/v1/domains/{_q(name)}", params={"force": "true"} if force else None)

    def rotate_domain_key(self, name: str) -> dict[str, Any]:
        return self.c.post(f"/v1/domains/{_q(name)}/rotate")  # type: ignore[no-any-return]

    # ---- secrets ---------------------------------------------------------------------
    def _p(self, domain: str, name: str = "", suffix: str = "") -> str:
        return f"/v1/domains/{_q(domain)}/secrets" + (f"/{_q(name)}" if name else "") + suffix

    def list(self, domain: str) -> list[str]:
        return self.c.get(self._p(domain))["names"]  # type: ignore[no-any-return]

    def create(self, domain: str, name: str, values: dict[str, Any]) -> dict[str, Any]:
        return self.c.post(self._p(domain), {"name": name, "values": values})  # type: ignore[no-any-return]

    def read(self, domain: str, name: str, version: int | None = None) -> dict[str, Any]:
        return self.c.get(self._p(domain, name), params={"version": version} if version else None)  # type: ignore[no-any-return]

    def update(self, domain: str, name: str, values: dict[str, Any], *, cas: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"values": values}
        if cas is not None:
            body["cas"] = cas
        return self.c.put(self._p(domain, name), body)  # type: ignore[no-any-return]

    def patch(self, domain: str, name: str, changes: dict[str, Any], *, cas: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"values": changes}
        if cas is not None:
            body["cas"] = cas
        return self.c.patch(self._p(domain, name), body)  # type: ignore[no-any-return]

    def delete(self, domain: str, name: str, versions: list[int] | None = None) -> None:
        params = {"versions": ",".join(map(str, versions))} if versions else None
        self.c.delete(self._p(domain, name), params=params)

    def undelete(self, domain: str, name: str, versions: list[int]) -> dict[str, Any]:
        return self.c.post(self._p(domain, name, "/undelete"), {"versions": versions})  # type: ignore[no-any-return]

    def destroy(self, domain: str, name: str, versions: list[int]) -> dict[str, Any]:
        return self.c.post(self._p(domain, name, "/destroy"), {"versions": versions})  # type: ignore[no-any-return]

    def purge(self, domain: str, name: str) -> None:
        self.c.delete(self._p(domain, name, "/metadata"))

    def metadata(self, domain: str, name: str) -> dict[str, Any]:
        return self.c.get(self._p(domain, name, "/metadata"))  # type: ignore[no-any-return]

    def set_max_versions(self, domain: str, name: str, max_versions: int | None) -> dict[str, Any]:
        return self.c.put(self._p(domain, name, "/metadata"), {"max_versions": max_versions})  # type: ignore[no-any-return]

    # ---- one-time references -----------------------------------------------------------
    def mint_reference(self, domain: str, name: str, *, ttl: int | None = None,
                       version: int | None = None) -> dict[str, Any]:
        body = {k: v for k, v in (("ttl", ttl), ("version", version)) if v is not None}
        return self.c.post(self._p(domain, name, "/references"), body)  # type: ignore[no-any-return]

    def redeem(self, reference: str) -> dict[str, Any]:
        return self.c.post("/v1/references/redeem", {"reference": reference})  # type: ignore[no-any-return]

    # ---- administration ----------------------------------------------------------------
    def import_preload(self, doc: dict[str, Any]) -> dict[str, Any]:
        return self.c.post("/v1/sys/secrets/import", doc)  # type: ignore[no-any-return]

    def rotate_master_key(self) -> dict[str, Any]:
        return self.c.post("/v1/sys/secrets/rotate-master")  # type: ignore[no-any-return]

    def rewrap(self) -> dict[str, Any]:
        return self.c.post("/v1/sys/secrets/rewrap")  # type: ignore[no-any-return]

    def export(self) -> dict[str, Any]:
        return self.c.post("/v1/sys/secrets/export")  # type: ignore[no-any-return]

    def restore(self, doc: dict[str, Any]) -> dict[str, Any]:
        return self.c.post("/v1/sys/secrets/restore", doc)  # type: ignore[no-any-return]
