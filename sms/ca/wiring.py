"""Build the CA engine and its publishers from the shell's Services (once per Services, lazily).

Other front ends (REST views, the CMP service, the CLI) all reach the engine through
:func:`ca_engine`, so one process holds one engine, one SQL store and one key cache.
"""
from __future__ import annotations

import threading
from typing import Any

from ca import CaEngine, CrlPublisher, OcspResponder
from ca.signer import PublicKey, SigningKey
from hsm.types import KeyInfo, KeyType

from ..runtime import Services
from .store import SqlCaStore

_LOCK = threading.Lock()
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


def ca_store(svc: Services) -> SqlCaStore:
    """The SQL repositories (both Protocols) over ``svc.sessions``."""
    store: SqlCaStore | None = svc.extras.get(_STORE_KEY)
    if store is not None:
        return store
    with _LOCK:
        store = svc.extras.get(_STORE_KEY)
        if store is None:
            store = SqlCaStore(svc.sessions)
            svc.extras[_STORE_KEY] = store
    return store


def ca_engine(svc: Services) -> CaEngine:
    """The process's CA engine: keys in ``svc.keystore`` (opened on first signature), records in
    the service database."""
    engine: CaEngine | None = svc.extras.get(EXTRA_KEY)
    if engine is not None:
        return engine
    store = ca_store(svc)
    with _LOCK:
        engine = svc.extras.get(EXTRA_KEY)
        if engine is None:
            engine = CaEngine(keys=TokenKeys(svc.keystore), cas=store, certificates=store)
            svc.extras[EXTRA_KEY] = engine
    return engine


def crl_publisher(svc: Services) -> CrlPublisher:
    """Hands out each CA's current CRL, re-signing it after a revocation or before nextUpdate."""
    pub: CrlPublisher | None = svc.extras.get(_CRL_KEY)
    if pub is not None:
        return pub
    engine = ca_engine(svc)
    with _LOCK:
        pub = svc.extras.get(_CRL_KEY)
        if pub is None:
            pub = CrlPublisher(engine)
            svc.extras[_CRL_KEY] = pub
    return pub


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
