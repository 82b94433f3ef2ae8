"""CRL publishing: :class:`CrlPublisher` hands out the CA's current CRL, signing a new one in the
token when there is none, when the stored one is due for renewal (``now >= nextUpdate -
settings.crl_renew_before``), or when a revocation changed since it was made (the CA's
revocation epoch moved). The service caches ``CrlRecord.der`` / ``.pem`` and serves them.
"""
from __future__ import annotations

import logging
import threading

from .engine import CaEngine
from .types import CrlRecord

log = logging.getLogger(__name__)


class CrlPublisher:
    """Thread-safe; several processes may each run one (CRL numbers come from the repository
    and only the highest-numbered CRL is kept)."""

    def __init__(self, engine: CaEngine) -> None:
        self._engine = engine
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _lock(self, ca_name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(ca_name, threading.Lock())

    def is_fresh(self, crl: CrlRecord | None) -> bool:
        """Whether ``crl`` may still be served: it reflects the CA's current revocation epoch and
        its renewal time has not come."""
        if crl is None:
            return False
        ca = self._engine.get_ca(crl.ca_name)
        if crl.revocation_epoch != self._engine.certificates.revocation_epoch(ca.name):
            return False
        return self._engine.now() < crl.next_update - ca.settings.crl_renew_before

    def current(self, ca_name: str) -> CrlRecord:
        """The CA's CRL to serve now (regenerated if stale or after a revocation). Raises
        CaNotFound; HsmError if a new CRL is needed and the token is down — the caller may then
        keep serving the CRL it has until its nextUpdate."""
        latest = self._engine.cas.latest_crl(ca_name)
        if self.is_fresh(latest):
            assert latest is not None
            return latest
        with self._lock(ca_name):
            latest = self._engine.cas.latest_crl(ca_name)
            if self.is_fresh(latest):
                assert latest is not None
                return latest
            return self._engine.generate_crl(ca_name)

    def refresh(self, ca_name: str) -> CrlRecord:
        """Sign a new CRL now, whatever the state of the stored one."""
        with self._lock(ca_name):
            return self._engine.generate_crl(ca_name)


__all__ = ["CrlPublisher"]
