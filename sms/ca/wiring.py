"""Build the CA engine and its publishers from the shell's Services (once per Services, lazily).

Other front ends (REST views, the CMP service, the CLI) all reach the engine through
:func:`ca_engine`, so one process holds one engine, one SQL store and one key cache.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ca import CaEngine, CrlPublisher, OcspResponder
from ca.signer import PublicKey, SigningKey
from hsm.types import KeyInfo, KeyType

from ..runtime import Services
from .store import SqlCaStore

log = logging.getLogger(__name__)

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


# A worker re-reads a CA's responder setting after this many seconds (another instance's change
# applies within it; this one's at once).
RESPONDER_TTL = 5.0


def ocsp_responder(svc: Services, ca_name: str) -> OcspResponder:
    """The OCSP responder of CA ``ca_name``: its delegated responder if it has one that has not
    expired (``csm ca ocsp-responder``, ``POST /v1/ca/<name>/ocsp-responder``), else the CA key.
    Raises CaNotFound."""
    engine = ca_engine(svc)
    now = time.monotonic()
    with _LOCK:
        cache: dict[str, tuple[float, bytes | None, OcspResponder]] = svc.extras.setdefault(_OCSP_KEY, {})
        hit = cache.get(ca_name)
    if hit is not None and now - hit[0] < RESPONDER_TTL:
        return hit[2]
    from .service import stored_ocsp_responder

    cred = stored_ocsp_responder(svc, ca_name)
    if cred is not None and cred.certificate.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        log.warning("the OCSP responder certificate of CA %s has expired; the CA key signs its answers", ca_name)
        cred = None
    if cred is not None and not _key_visible(svc, cred.key_label):
        # Just created by another worker and not visible in this process yet (SoftHSM indexes
        # other processes' new objects lazily): the CA key answers, and the next request looks again.
        log.warning("the OCSP responder key of CA %s is not visible here yet; the CA key signs meanwhile", ca_name)
        cred, now = None, now - RESPONDER_TTL + 1.0  # look again in a second
    der = cred.certificate_der if cred is not None else None
    responder = hit[2] if hit is not None and hit[1] == der else OcspResponder(engine, ca_name, responder=cred)
    with _LOCK:
        cache[ca_name] = (now, der, responder)
    return responder


def _key_visible(svc: Services, label: str) -> bool:
    ks = svc.keystore.get()
    for delay in (0.0, 0.05):
        time.sleep(delay)
        if ks.exists(label):
            return True
    return False


def forget_ocsp_responder(svc: Services, ca_name: str) -> None:
    """Drop this worker's cached responder of ``ca_name`` (its responder setting changed)."""
    with _LOCK:
        svc.extras.setdefault(_OCSP_KEY, {}).pop(ca_name, None)


__all__ = ["TokenKeys", "ca_engine", "ca_store", "crl_publisher", "forget_ocsp_responder", "ocsp_responder"]
