"""The OpenBao/Vault SecretStore: csm's sealed documents in a KV v2 mount, through hvac.

OpenBao only ever sees ciphertexts (still sealed under csm's token-held domain keys) and
wrapped domain keys. Layout in the mount (default ``csm``)::

    domains/<name>                -> {"id", "name", "key_version", "max_versions", "keys": [...], times}
    secrets/<domain id>/<name>    -> {"name", "current_version", "max_versions", "versions": [...], times}

One KV document per secret holds all its kept versions, so every csm operation on a secret is
one KV check-and-set write (``cas`` = the KV version read): two csm instances racing on the
same secret cannot lose an update. The mount is configured with ``max_versions=1``, so
OpenBao keeps no stale copies of destroyed or rewrapped ciphertexts.
"""
from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import hvac
import hvac.exceptions as hvx
import requests

from ..errors import (
    BackendUnavailable,
    CasMismatch,
    DomainExists,
    DomainNotEmpty,
    DomainNotFound,
    SecretExists,
    SecretNotFound,
    VersionNotFound,
)
from ..store import (
    DomainRecord,
    Resealer,
    SealedSecret,
    SealedVersion,
    Sealer,
    SecretMeta,
    VersionMeta,
    WrappedKey,
    WriteMode,
)

T = TypeVar("T")
_RETRIES = 20


class _Lost(Exception):
    """The KV check-and-set lost a race; re-read and retry."""


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


class VaultSecretStore:
    name = "vault"

    def __init__(self, addr: str, token: str, *, mount: str = "csm", verify: bool | str = True,
                 timeout: float = 10.0, clock: Callable[[], float] = time.time, domain_cache_ttl: float = 2.0) -> None:
        self._client = hvac.Client(url=addr, token=token, verify=verify, timeout=timeout)
        self._kv = self._client.secrets.kv.v2
        self.mount = mount
        self._clock = clock
        self._ttl = domain_cache_ttl
        self._domains: dict[str, tuple[float, DomainRecord]] = {}
        self._lock = threading.Lock()
        self._ready = False

    def __repr__(self) -> str:
        return f"VaultSecretStore(mount={self.mount!r})"

    # ---- plumbing ------------------------------------------------------------------
    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (hvx.VaultDown, hvx.InternalServerError, hvx.BadGateway, requests.ConnectionError,
                requests.Timeout) as exc:
            raise BackendUnavailable(f"the OpenBao/Vault backend is unavailable ({type(exc).__name__})") from None
        except hvx.Forbidden:
            raise BackendUnavailable("the OpenBao/Vault backend refused csm's token") from None

    def ensure_mount(self) -> None:
        if self._ready:
            return
        mounts = self._call(lambda: self._client.sys.list_mounted_secrets_engines())
        data = mounts.get("data", mounts)
        if f"{self.mount}/" not in data:
            try:
                self._call(lambda: self._client.sys.enable_secrets_engine(
                    "kv", path=self.mount, options={"version": "2"}, description="csm sealed secrets"))
            except hvx.InvalidRequest:  # another instance mounted it meanwhile
                pass
        self._call(lambda: self._kv.configure(max_versions=1, mount_point=self.mount))
        self._ready = True

    def _read(self, path: str) -> tuple[dict[str, Any], int] | None:
        """(document, KV version) or None when absent."""
        self.ensure_mount()
        try:
            r = self._call(lambda: self._kv.read_secret_version(path, mount_point=self.mount,
                                                                raise_on_deleted_version=True))
        except hvx.InvalidPath:
            return None
        return r["data"]["data"], int(r["data"]["metadata"]["version"])

    def _put(self, path: str, doc: dict[str, Any], cas: int) -> None:
        self.ensure_mount()
        try:
            self._call(lambda: self._kv.create_or_update_secret(path, secret=doc, cas=cas, mount_point=self.mount))
        except hvx.InvalidRequest as exc:
            if "check-and-set" in str(exc):
                raise _Lost() from None
            raise

    def _remove(self, path: str) -> None:
        self.ensure_mount()
        try:
            self._call(lambda: self._kv.delete_metadata_and_all_versions(path, mount_point=self.mount))
        except hvx.InvalidPath:
            pass

    def _list(self, path: str) -> list[str]:
        self.ensure_mount()
        try:
            r = self._call(lambda: self._kv.list_secrets(path, mount_point=self.mount))
        except hvx.InvalidPath:
            return []
        return sorted(k for k in r["data"]["keys"] if not k.endswith("/"))

    def _retry(self, fn: Callable[[], T]) -> T:
        for attempt in range(_RETRIES):
            try:
                return fn()
            except _Lost:
                time.sleep(min(0.001 * 2 ** attempt, 0.05))
        raise BackendUnavailable("too much contention on one secret; retry")

    # ---- documents <-> records -----------------------------------------------------
    @staticmethod
    def _domain_doc(rec: DomainRecord) -> dict[str, Any]:
        return {"id": rec.id, "name": rec.name, "created_at": rec.created_at, "updated_at": rec.updated_at,
                "key_version": rec.key_version, "max_versions": rec.max_versions,
                "keys": [{"version": k.version, "kek_version": k.kek_version, "wrapped": _b64(k.wrapped),
                          "created_at": k.created_at} for k in rec.keys]}

    @staticmethod
    def _domain_rec(d: dict[str, Any]) -> DomainRecord:
        return DomainRecord(d["id"], d["name"], d["created_at"], d["updated_at"], d["key_version"], d["max_versions"],
                            tuple(WrappedKey(k["version"], k["kek_version"], _unb64(k["wrapped"]), k["created_at"])
                                  for k in d["keys"]))

    @staticmethod
    def _meta(domain: str, doc: dict[str, Any]) -> SecretMeta:
        return SecretMeta(domain, doc["name"], doc["created_at"], doc["updated_at"], doc["current_version"],
                          doc["max_versions"], tuple(VersionMeta(v["version"], v["created_at"], v["deleted_at"],
                                                                 v["destroyed"]) for v in doc["versions"]))

    def _domain(self, name: str, *, fresh: bool = False) -> DomainRecord:
        now = time.monotonic()
        hit = self._domains.get(name)
        if hit and not fresh and now - hit[0] < self._ttl:
            return hit[1]
        got = self._read(f"domains/{name}")
        if got is None:
            self._domains.pop(name, None)
            raise DomainNotFound(name)
        rec = self._domain_rec(got[0])
        self._domains[name] = (now, rec)
        return rec

    def _secret_path(self, dom: DomainRecord, name: str) -> str:
        return f"secrets/{dom.id}/{name}"

    # ---- domains -------------------------------------------------------------------
    def create_domain(self, rec: DomainRecord) -> DomainRecord:
        try:
            self._put(f"domains/{rec.name}", self._domain_doc(rec), cas=0)
        except _Lost:
            raise DomainExists(rec.name) from None
        return rec

    def get_domain(self, name: str) -> DomainRecord:
        return self._domain(name, fresh=True)

    def list_domains(self) -> list[DomainRecord]:
        out = []
        for n in self._list("domains"):
            try:
                out.append(self._domain(n, fresh=True))
            except DomainNotFound:
                continue
        return out

    def delete_domain(self, name: str, *, force: bool) -> int:
        dom = self._domain(name, fresh=True)
        names = self._list(f"secrets/{dom.id}")
        if names and not force:
            raise DomainNotEmpty(name, len(names))
        self._remove(f"domains/{name}")  # first: the domain disappears at once
        self._domains.pop(name, None)
        for n in names:
            self._remove(self._secret_path(dom, n))
        return len(names)

    def _update_domain(self, name: str, change: Callable[[dict[str, Any]], None]) -> DomainRecord:
        def unit() -> DomainRecord:
            got = self._read(f"domains/{name}")
            if got is None:
                raise DomainNotFound(name)
            doc, kv = got
            change(doc)
            doc["updated_at"] = self._clock()
            self._put(f"domains/{name}", doc, cas=kv)
            rec = self._domain_rec(doc)
            self._domains[name] = (time.monotonic(), rec)
            return rec

        return self._retry(unit)

    def set_domain_keys(self, name: str, keys: Sequence[WrappedKey], key_version: int) -> DomainRecord:
        def change(doc: dict[str, Any]) -> None:
            by_version = {k["version"]: k for k in doc["keys"]}
            for k in keys:
                by_version[k.version] = {"version": k.version, "kek_version": k.kek_version,
                                         "wrapped": _b64(k.wrapped), "created_at": k.created_at}
            doc["keys"] = [by_version[v] for v in sorted(by_version)]
            doc["key_version"] = max(doc["key_version"], key_version)

        return self._update_domain(name, change)

    def set_domain_max_versions(self, name: str, max_versions: int | None) -> DomainRecord:
        return self._update_domain(name, lambda doc: doc.__setitem__("max_versions", max_versions))

    # ---- secrets -------------------------------------------------------------------
    def list_secrets(self, domain: str) -> list[str]:
        return self._list(f"secrets/{self._domain(domain, fresh=True).id}")

    def write(self, domain: str, name: str, seal: Sealer, *, mode: WriteMode, cas: int | None,
              default_max_versions: int) -> SecretMeta:
        def unit() -> SecretMeta:
            dom = self._domain(domain)
            path = self._secret_path(dom, name)
            got = self._read(path)
            now = self._clock()
            if got is None:
                if mode is WriteMode.UPDATE:
                    raise SecretNotFound(domain, name)
                if cas not in (None, 0):
                    raise CasMismatch(name, cas, 0)
                doc: dict[str, Any] = {"name": name, "created_at": now, "updated_at": now, "current_version": 0,
                                       "max_versions": None, "versions": []}
                kv = 0
            else:
                doc, kv = got
                if mode is WriteMode.CREATE:
                    raise SecretExists(domain, name)
                if cas is not None and cas != doc["current_version"]:
                    raise CasMismatch(name, cas, doc["current_version"])
            version = doc["current_version"] + 1
            key_version, blob = seal(dom, version)
            doc["versions"].append({"version": version, "created_at": now, "deleted_at": None, "destroyed": False,
                                    "key_version": key_version, "ct": _b64(blob)})
            keep = doc["max_versions"] or dom.max_versions or default_max_versions
            doc["versions"] = [v for v in doc["versions"] if v["version"] > version - keep]
            doc["current_version"], doc["updated_at"] = version, now
            self._put(path, doc, cas=kv)
            return SecretMeta(domain, name, doc["created_at"], now, version, doc["max_versions"],
                              (VersionMeta(version, now),))

        return self._retry(unit)

    def _doc(self, domain: str, name: str) -> tuple[DomainRecord, dict[str, Any], int]:
        dom = self._domain(domain)
        got = self._read(self._secret_path(dom, name))
        if got is None:
            dom = self._domain(domain, fresh=True)  # a recreated domain has a new id
            got = self._read(self._secret_path(dom, name))
            if got is None:
                raise SecretNotFound(domain, name)
        return dom, got[0], got[1]

    def read(self, domain: str, name: str, version: int | None) -> tuple[DomainRecord, SecretMeta, SealedVersion]:
        dom, doc, _kv = self._doc(domain, name)
        wanted = version if version is not None else doc["current_version"]
        v = next((v for v in doc["versions"] if v["version"] == wanted), None)
        if v is None:
            raise VersionNotFound(name, wanted, "destroyed" if 0 < wanted <= doc["current_version"] else "absent")
        vm = VersionMeta(v["version"], v["created_at"], v["deleted_at"], v["destroyed"])
        if vm.state != "live" or v["ct"] is None:
            raise VersionNotFound(name, wanted, vm.state if vm.state != "live" else "destroyed")
        meta = SecretMeta(domain, name, doc["created_at"], doc["updated_at"], doc["current_version"],
                          doc["max_versions"], (vm,))
        return dom, meta, SealedVersion(vm, v["key_version"], _unb64(v["ct"]))

    def metadata(self, domain: str, name: str) -> SecretMeta:
        return self._meta(domain, self._doc(domain, name)[1])

    def _update_secret(self, domain: str, name: str, change: Callable[[dict[str, Any], DomainRecord], None]) -> SecretMeta:
        def unit() -> SecretMeta:
            dom, doc, kv = self._doc(domain, name)
            change(doc, dom)
            doc["updated_at"] = self._clock()
            self._put(self._secret_path(dom, name), doc, cas=kv)
            return self._meta(domain, doc)

        return self._retry(unit)

    def set_max_versions(self, domain: str, name: str, max_versions: int | None,
                         default_max_versions: int) -> SecretMeta:
        def change(doc: dict[str, Any], dom: DomainRecord) -> None:
            doc["max_versions"] = max_versions
            keep = max_versions or dom.max_versions or default_max_versions
            doc["versions"] = [v for v in doc["versions"] if v["version"] > doc["current_version"] - keep]

        return self._update_secret(domain, name, change)

    def _mark(self, domain: str, name: str, versions: Sequence[int] | None,
              fn: Callable[[dict[str, Any], float], None]) -> SecretMeta:
        def change(doc: dict[str, Any], _dom: DomainRecord) -> None:
            wanted = set(versions) if versions is not None else {doc["current_version"]}
            now = self._clock()
            for v in doc["versions"]:
                if v["version"] in wanted:
                    fn(v, now)

        return self._update_secret(domain, name, change)

    def delete_versions(self, domain: str, name: str, versions: Sequence[int] | None) -> SecretMeta:
        def soft(v: dict[str, Any], now: float) -> None:
            if v["deleted_at"] is None and not v["destroyed"]:
                v["deleted_at"] = now

        return self._mark(domain, name, versions, soft)

    def undelete_versions(self, domain: str, name: str, versions: Sequence[int]) -> SecretMeta:
        def restore(v: dict[str, Any], _now: float) -> None:
            if not v["destroyed"]:
                v["deleted_at"] = None

        return self._mark(domain, name, versions, restore)

    def destroy_versions(self, domain: str, name: str, versions: Sequence[int]) -> SecretMeta:
        def destroy(v: dict[str, Any], _now: float) -> None:
            v["destroyed"], v["ct"] = True, None

        return self._mark(domain, name, versions, destroy)

    def purge(self, domain: str, name: str) -> None:
        dom, _doc, _kv = self._doc(domain, name)
        self._remove(self._secret_path(dom, name))

    # ---- maintenance ---------------------------------------------------------------
    def reseal(self, domain: str, reseal: Resealer) -> int:
        dom = self._domain(domain, fresh=True)
        total = 0
        for n in self._list(f"secrets/{dom.id}"):
            changed = [0]

            def change(doc: dict[str, Any], _dom: DomainRecord, changed: list[int] = changed) -> None:
                changed[0] = 0
                for v in doc["versions"]:
                    if v["ct"] is None:
                        continue
                    out = reseal(doc["name"], v["version"], v["key_version"], _unb64(v["ct"]))
                    if out is not None:
                        v["key_version"], v["ct"] = out[0], _b64(out[1])
                        changed[0] += 1

            try:
                self._update_secret(domain, n, change)
            except SecretNotFound:
                continue
            total += changed[0]
        return total

    def export_domain(self, domain: str) -> Iterator[SealedSecret]:
        dom = self._domain(domain, fresh=True)
        for n in self._list(f"secrets/{dom.id}"):
            got = self._read(self._secret_path(dom, n))
            if got is None:
                continue
            doc = got[0]
            meta = self._meta(domain, doc)
            yield SealedSecret(meta, tuple(
                SealedVersion(VersionMeta(v["version"], v["created_at"], v["deleted_at"], v["destroyed"]),
                              v["key_version"], _unb64(v["ct"]) if v["ct"] is not None else None)
                for v in doc["versions"]))

    def import_secret(self, domain: str, secret: SealedSecret) -> bool:
        dom = self._domain(domain, fresh=True)
        m = secret.meta
        doc = {"name": m.name, "created_at": m.created_at, "updated_at": m.updated_at,
               "current_version": m.current_version, "max_versions": m.max_versions,
               "versions": [{"version": v.meta.version, "created_at": v.meta.created_at,
                             "deleted_at": v.meta.deleted_at, "destroyed": v.meta.destroyed,
                             "key_version": v.key_version,
                             "ct": _b64(v.ciphertext) if v.ciphertext is not None else None}
                            for v in secret.versions]}
        try:
            self._put(self._secret_path(dom, m.name), doc, cas=0)
        except _Lost:
            return False
        return True

    def ping(self) -> None:
        self.ensure_mount()
        health = self._call(lambda: self._client.sys.read_health_status(method="GET"))
        if isinstance(health, dict) and health.get("sealed"):
            raise BackendUnavailable("the OpenBao/Vault backend is sealed")
