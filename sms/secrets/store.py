"""The storage seam: what the secrets service needs from a backend (SQL or OpenBao/Vault).

Backends hold only ciphertexts and metadata. Because the associated data of a ciphertext
binds the version number, a write hands the backend a *sealer* that is called, inside the
backend's atomic step, with the version being written and returns ``(key_version,
ciphertext)``. Every method raises the feature's errors (DomainNotFound, SecretNotFound,
CasMismatch, ...), never a driver's.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class WriteMode(enum.Enum):
    CREATE = "create"  # refuse if the secret exists
    UPDATE = "update"  # refuse if it does not
    UPSERT = "upsert"  # either (ONAP's POST semantics, import)


@dataclass(frozen=True)
class WrappedKey:
    """A domain data key as stored: wrapped (RFC 5649) under master key ``kek_version``."""

    version: int
    kek_version: int
    wrapped: bytes = field(repr=False)
    created_at: float


@dataclass(frozen=True)
class DomainRecord:
    id: str
    name: str
    created_at: float
    updated_at: float
    key_version: int
    max_versions: int | None = None
    keys: tuple[WrappedKey, ...] = ()

    def key(self, version: int) -> WrappedKey | None:
        return next((k for k in self.keys if k.version == version), None)


@dataclass(frozen=True)
class VersionMeta:
    version: int
    created_at: float
    deleted_at: float | None = None
    destroyed: bool = False

    @property
    def state(self) -> str:
        return "destroyed" if self.destroyed else "deleted" if self.deleted_at is not None else "live"


@dataclass(frozen=True)
class SecretMeta:
    domain: str
    name: str
    created_at: float
    updated_at: float
    current_version: int
    max_versions: int | None
    versions: tuple[VersionMeta, ...] = ()

    def version(self, n: int) -> VersionMeta | None:
        return next((v for v in self.versions if v.version == n), None)

    def audit_detail(self) -> dict[str, int]:
        """What the audit entry of the write that produced this records (sms.db.attach)."""
        return {"version": self.current_version}


@dataclass(frozen=True)
class SealedVersion:
    meta: VersionMeta
    key_version: int
    ciphertext: bytes | None = field(repr=False)  # None once destroyed


@dataclass(frozen=True)
class SealedSecret:
    """A whole secret as exported: metadata plus every kept version's ciphertext."""

    meta: SecretMeta
    versions: tuple[SealedVersion, ...]


# (domain, version being written) -> (key_version, ciphertext)
Sealer = Callable[[DomainRecord, int], tuple[int, bytes]]
# (secret name, version, key_version, ciphertext) -> (new key_version, new ciphertext) or None to keep
Resealer = Callable[[str, int, int, bytes], tuple[int, bytes] | None]


class SecretStore(Protocol):
    """Domains and versioned, sealed secrets. Implementations must be safe across processes."""

    name: str

    # ---- domains -------------------------------------------------------------------
    def create_domain(self, rec: DomainRecord) -> DomainRecord: ...

    def get_domain(self, name: str) -> DomainRecord: ...

    def list_domains(self) -> list[DomainRecord]: ...

    def delete_domain(self, name: str, *, force: bool) -> int: ...

    def set_domain_keys(self, name: str, keys: Sequence[WrappedKey], key_version: int) -> DomainRecord: ...

    def set_domain_max_versions(self, name: str, max_versions: int | None) -> DomainRecord: ...

    # ---- secrets -------------------------------------------------------------------
    def list_secrets(self, domain: str) -> list[str]: ...

    def write(self, domain: str, name: str, seal: Sealer, *, mode: WriteMode, cas: int | None,
              default_max_versions: int) -> SecretMeta: ...

    def read(self, domain: str, name: str, version: int | None) -> tuple[DomainRecord, SecretMeta, SealedVersion]: ...

    def metadata(self, domain: str, name: str) -> SecretMeta: ...

    def set_max_versions(self, domain: str, name: str, max_versions: int | None,
                         default_max_versions: int) -> SecretMeta: ...

    def delete_versions(self, domain: str, name: str, versions: Sequence[int] | None) -> SecretMeta: ...

    def undelete_versions(self, domain: str, name: str, versions: Sequence[int]) -> SecretMeta: ...

    def destroy_versions(self, domain: str, name: str, versions: Sequence[int]) -> SecretMeta: ...

    def purge(self, domain: str, name: str) -> None: ...

    # ---- maintenance ---------------------------------------------------------------
    def reseal(self, domain: str, reseal: Resealer) -> int: ...

    def export_domain(self, domain: str) -> Iterator[SealedSecret]: ...

    def import_secret(self, domain: str, secret: SealedSecret) -> bool: ...

    def ping(self) -> None: ...
