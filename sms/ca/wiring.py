"""Build the CA engine and its publishers from the shell's Services (once per Services, lazily).

Other front ends (REST views, the CMP service, the CLI) all reach the engine through
:func:`ca_engine`, so one process holds one engine, one SQL store and one key cache.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ca import CaEngine, CrlPublisher, OcspResponder
from ca.signer import PublicKey, SigningKey
from hsm.types import KeyInfo, KeyType

from ..runtime import Services
from .store import SqlCaStore

_LOCK = threading.RLock()
T = TypeVar("T")
EXTRA_KEY = "ca"
_STORE_KEY = "ca.store"
_CRL_KEY = "ca.crl"
_OCSP_KEY = "ca.ocsp"


class TokenKeys:
    """The engine's :class:`ca.signer.KeyProvider` over the service's lazily opened key store
    (whose own ``get()`` returns the store, so the label lookups are spelled out here)."""

    def __init__(self, lazy: Any) -> None:
        self._lazy = lazy

    def generate(self, label: str, key_type: KeyType) -> KeyInfo:
        info: KeyInfo = self._lazy.get().generate(label, key_type)
        return info

    def import_private_key(self, label: str, data: bytes, password: bytes | str | None = None) -> KeyInfo:
        info: KeyInfo = self._lazy.get().import_private_key(label, data, password)
        return info

    def private_key(self, label: str) -> SigningKey:
        key: SigningKey = self._lazy.get().private_key(label)
        return key

    def public_key(self, label: str) -> PublicKey:
        key: PublicKey = self._lazy.get().public_key(label)
        return key

    def get(self, label: str) -> KeyInfo:
        info: KeyInfo = self._lazy.get().get(label)
        return info

    def destroy(self, label: str) -> None:
        self._lazy.get().destroy(label)


def _once(svc: Services, key: str, build: Callable[[], T]) -> T:
    """``svc.extras[key]``, built by ``build()`` the first time (once, even with threads)."""
    value: T | None = svc.extras.get(key)
    if value is not None:
        return value
    with _LOCK:
        value = svc.extras.get(key)
        if value is None:
            value = build()
            svc.extras[key] = value
    return value


def ca_store(svc: Services) -> SqlCaStore:
    """The SQL repositories (both Protocols) over ``svc.sessions``."""
    return _once(svc, _STORE_KEY, lambda: SqlCaStore(svc.sessions))


def ca_engine(svc: Services) -> CaEngine:
    """The process's CA engine: keys in ``svc.keystore`` (opened on first signature), records in
    the service database."""
    store = ca_store(svc)
    return _once(svc, EXTRA_KEY, lambda: CaEngine(keys=TokenKeys(svc.keystore), cas=store, certificates=store))


def crl_publisher(svc: Services) -> CrlPublisher:
    """Hands out each CA's current CRL, re-signing it after a revocation or before nextUpdate."""
    engine = ca_engine(svc)
    return _once(svc, _CRL_KEY, lambda: CrlPublisher(engine))


def ocsp_responder(svc: Services, ca_name: str) -> OcspResponder:
    """The OCSP responder of CA ``ca_name`` (signing with the CA key). Raises CaNotFound."""
    engine = ca_engine(svc)
    with _LOCK:
        responders: dict[str, OcspResponder] = svc.extras.setdefault(_OCSP_KEY, {})
        responder = responders.get(ca_name)
    if responder is None:
        responder = OcspResponder(engine, ca_name)
        with _LOCK:
            responder = responders.setdefault(ca_name, responder)
    return responder


__all__ = ["TokenKeys", "ca_engine", "ca_store", "crl_publisher", "ocsp_responder"]
