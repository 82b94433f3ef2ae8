"""The one choke point for secret encryption: AES-256-GCM in the token, keys by version.

Key hierarchy (see the README's "Secrets" section for the measurements behind it):

* master keys ``sms-kek-v<n>``: AES-256 token keys that only wrap and unwrap; never leave
  the token. The newest version present in the token is current.
* domain data keys: one AES-256 key per domain and key version, generated *in the token*
  and stored in the backend only wrapped (RFC 5649) under a master key. A process loads a
  domain key into its token session by unwrapping on first use and then keeps its handle
  (the key store caches handles), so the hot path is exactly one token AES-GCM call.

Ciphertext layout: ``0x01 | key_version (u32, big endian) | nonce(12) | ct | tag(16)``.
Associated data: ``csm:secret:v1 NUL domain_id NUL name NUL version NUL key_version``, so a
ciphertext copied to another domain, secret, version or key version fails to decrypt.
"""
from __future__ import annotations

import logging
import re
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import hsm
from hsm import KeyType

from .errors import KeyUnavailable
from .store import DomainRecord, WrappedKey

log = logging.getLogger(__name__)

FORMAT = 1
_HEADER = struct.Struct(">BI")
KEK_PREFIX = "sms-kek-v"
DEK_PREFIX = "sms-dek-"
_KEK_RE = re.compile(r"^sms-kek-v(\d+)$")


class SecretKeyStore(Protocol):
    """The slice of hsm.keystore.KeyStore the secrets feature needs."""

    def generate(self, label: str, key_type: KeyType, *, wrappable: bool = False) -> Any: ...

    def exists(self, label: str) -> bool: ...

    def list_keys(self) -> list[Any]: ...

    def destroy(self, label: str) -> None: ...

    def encrypt(self, label: str, plaintext: bytes, aad: bytes = b"") -> bytes: ...

    def decrypt(self, label: str, blob: bytes, aad: bytes = b"") -> bytes: ...

    def wrap(self, kek_label: str, target_label: str) -> bytes: ...

    def unwrap(self, kek_label: str, wrapped: bytes, label: str, key_type: KeyType) -> Any: ...


def kek_label(version: int) -> str:
    return f"{KEK_PREFIX}{version}"


def dek_label(domain_id: str, version: int) -> str:
    return f"{DEK_PREFIX}{domain_id}-v{version}"


def associated_data(domain_id: str, name: str, version: int, key_version: int) -> bytes:
    return b"csm:secret:v1\x00%s\x00%s\x00%d\x00%d" % (domain_id.encode(), name.encode(), version, key_version)


def key_version_of(blob: bytes) -> int:
    fmt, kv = _HEADER.unpack_from(blob)
    if fmt != FORMAT:
        raise hsm.DecryptionFailed("unknown ciphertext format")
    return int(kv)


class Envelope:
    """Seal and open secret values; manage master and domain keys."""

    def __init__(self, keystore: Any, *, clock: Callable[[], float] = time.time) -> None:
        self._ks = keystore  # an hsm KeyStore or the service's LazyKeyStore
        self._clock = clock
        self._loaded: set[str] = set()
        self._lock = threading.Lock()
        self._kek_cache: tuple[float, int] | None = None

    # ---- master keys -----------------------------------------------------------------
    def kek_versions(self) -> list[int]:
        out = []
        for info in self._ks.list_keys():
            m = _KEK_RE.match(getattr(info, "label", ""))
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def current_kek(self, *, create: bool = True) -> int:
        """The newest master key version (created on first use); cached for 5 s."""
        cached = self._kek_cache
        if cached and self._clock() - cached[0] < 5:
            return cached[1]
        versions = self.kek_versions()
        if not versions:
            if not create:
                raise KeyUnavailable("no secrets master key in the token")
            try:
                self._ks.generate(kek_label(1), KeyType.AES_256)
            except hsm.DuplicateLabel:
                pass
            versions = [1]
        self._kek_cache = (self._clock(), versions[-1])
        return versions[-1]

    def rotate_kek(self) -> int:
        """Create master key version n+1 (callers then rewrap the domain keys)."""
        new = self.current_kek() + 1
        while True:
            try:
                self._ks.generate(kek_label(new), KeyType.AES_256)
                break
            except hsm.DuplicateLabel:  # another instance rotated at the same time
                new += 1
        self._kek_cache = (self._clock(), new)
        return new

    # ---- domain keys -----------------------------------------------------------------
    def new_domain_key(self, domain_id: str, version: int) -> WrappedKey:
        """Generate a domain key in the token and return it wrapped under the current master key."""
        kek = self.current_kek()
        label = dek_label(domain_id, version)
        self._ks.generate(label, KeyType.AES_256, wrappable=True)
        try:
            wrapped = self._ks.wrap(kek_label(kek), label)
        except Exception:
            self._forget(label)
            raise
        with self._lock:
            self._loaded.add(label)
        return WrappedKey(version, kek, wrapped, self._clock())

    def rewrap_domain_key(self, domain: DomainRecord, key: WrappedKey, kek: int) -> WrappedKey:
        label = self.load(domain, key.version, key)
        return WrappedKey(key.version, kek, self._ks.wrap(kek_label(kek), label), key.created_at)

    def load(self, domain: DomainRecord, version: int, key: WrappedKey | None = None,
             fetch: Callable[[], DomainRecord] | None = None) -> str:
        """Make sure the domain key ``version`` is usable in this token; return its label."""
        label = dek_label(domain.id, version)
        if label in self._loaded:
            return label
        with self._lock:
            if label in self._loaded:
                return label
            if not self._ks.exists(label):
                if key is None:
                    key = domain.key(version) or (fetch().key(version) if fetch else None)
                if key is None:
                    raise KeyUnavailable(f"domain key version {version} of {domain.name!r} is not stored")
                try:
                    self._ks.unwrap(kek_label(key.kek_version), key.wrapped, label, KeyType.AES_256)
                except hsm.DuplicateLabel:
                    pass
                except hsm.KeyNotFound:
                    raise KeyUnavailable(
                        f"master key version {key.kek_version} is not in this token; the domain key of "
                        f"{domain.name!r} cannot be loaded") from None
            self._loaded.add(label)
        return label

    def forget_domain(self, domain: DomainRecord) -> None:
        """Destroy the token copies of a deleted domain's keys (best effort)."""
        for k in domain.keys or (WrappedKey(v, 0, b"", 0) for v in range(1, domain.key_version + 1)):
            self._forget(dek_label(domain.id, k.version))

    def _forget(self, label: str) -> None:
        with self._lock:
            self._loaded.discard(label)
        try:
            self._ks.destroy(label)
        except hsm.KeyNotFound:
            pass
        except hsm.HsmError as exc:  # pragma: no cover - cleanup only
            log.warning("could not destroy token key %s: %s", label, type(exc).__name__)

    # ---- values ----------------------------------------------------------------------
    def seal(self, domain: DomainRecord, name: str, version: int, plaintext: bytes,
             fetch: Callable[[], DomainRecord] | None = None) -> tuple[int, bytes]:
        kv = domain.key_version
        label = self.load(domain, kv, fetch=fetch)
        blob = self._ks.encrypt(label, plaintext, associated_data(domain.id, name, version, kv))
        return kv, _HEADER.pack(FORMAT, kv) + blob

    def open(self, domain: DomainRecord, name: str, version: int, blob: bytes,
             fetch: Callable[[], DomainRecord] | None = None) -> bytes:
        kv = key_version_of(blob)
        label = self.load(domain, kv, fetch=fetch)
        return bytes(self._ks.decrypt(label, blob[_HEADER.size:], associated_data(domain.id, name, version, kv)))

    # ---- export MAC (AES-GMAC under a master key: GCM over an empty plaintext) ----------
    def mac(self, kek: int, digest: bytes) -> bytes:
        return bytes(self._ks.encrypt(kek_label(kek), b"", b"csm:export:v1\x00" + digest))

    def verify_mac(self, kek: int, digest: bytes, tag: bytes) -> bool:
        try:
            self._ks.decrypt(kek_label(kek), tag, b"csm:export:v1\x00" + digest)
            return True
        except (hsm.DecryptionFailed, hsm.KeyNotFound):
            return False
