"""Build the CMP service from the shell's Services (once per Services, lazily)."""
from __future__ import annotations

import threading

from ca import CaEngine

from ..runtime import Services
from .service import CmpService
from .store import SecretSealer, SqlCmpProfileStore, SqlTransactionStore

_LOCK = threading.Lock()
EXTRA_KEY = "cmp"


def _engine(svc: Services) -> CaEngine:
    from ..ca.wiring import ca_engine

    return ca_engine(svc)


def cmp_service(svc: Services) -> CmpService:
    cs: CmpService | None = svc.extras.get(EXTRA_KEY)
    if cs is not None:
        return cs
    with _LOCK:
        cs = svc.extras.get(EXTRA_KEY)
        if cs is None:
            cs = CmpService(SqlCmpProfileStore(svc.sessions, SecretSealer(svc.keystore)),
                            SqlTransactionStore(svc.sessions), lambda: _engine(svc))
            svc.extras[EXTRA_KEY] = cs
    return cs
