"""The service's collaborators, built once per process and handed to the web layer.

Nothing here touches PKCS#11 at construction: the key store opens lazily on first use, in
the worker process (after the WSGI server forked), so no PKCS#11 context crosses a fork.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

import hsm
from hsm.types import TokenConfig

from . import db
from .audit.service import AuditLog
from .auth.service import AuthService
from .config import Settings

log = logging.getLogger(__name__)

AUDIT_MAC_KEY = "csm-audit-mac-v1"
BOOTSTRAP_CA_KEY = "csm-bootstrap-ca"


def prepare_module_env(settings: Settings) -> None:
    """Point SoftHSM at the data directory's config unless the environment already does."""
    if "SOFTHSM2_CONF" not in os.environ and settings.softhsm_conf.exists():
        os.environ["SOFTHSM2_CONF"] = str(settings.softhsm_conf)


def pin_source_spec(settings: Settings) -> str:
    """The configured PIN source, or the one `csm init` recorded in the data directory."""
    if settings.hsm_pin_source:
        return settings.hsm_pin_source
    recorded = settings.data_path / "hsm" / "pin-source"
    if recorded.exists():
        return recorded.read_text().strip()
    return ""


class LazyKeyStore:
    """A KeyStore that logs in on first use in this process; 'sealed' until the PIN is available."""

    def __init__(self, settings: Settings, *, token_config: TokenConfig | None = None,
                 keystore: Any = None) -> None:
        self._settings = settings
        self._explicit = token_config
        self._ks: Any = keystore
        self._pid = os.getpid() if keystore is not None else 0
        self._owned = keystore is None
        self._lock = threading.Lock()
        self.sealed_reason: str | None = None

    def _token_config(self) -> TokenConfig:
        if self._explicit is not None:
            return self._explicit
        from hsm.pin import pin_source_from_spec

        spec = pin_source_spec(self._settings)
        if not spec:
            raise hsm.SealError("no PIN source is configured (run `csm init` or set CSM_HSM_PIN_SOURCE)")
        pin = pin_source_from_spec(spec).get_pin()
        return TokenConfig(
            module_path=self._settings.hsm_module, token_label=self._settings.hsm_token_label, pin=pin
        )

    def get(self) -> Any:
        pid = os.getpid()
        ks = self._ks
        if ks is not None and self._pid == pid:
            return ks
        with self._lock:
            if self._ks is None or self._pid != pid:
                from hsm.keystore import KeyStore

                prepare_module_env(self._settings)
                try:
                    cfg = self._token_config()
                except hsm.SealError as exc:
                    self.sealed_reason = str(exc)
                    raise
                self.sealed_reason = None
                ks = KeyStore(cfg, lock_mode=self._settings.hsm_lock) if _accepts_lock_mode() else KeyStore(cfg)
                ks.open()
                self._ks, self._pid = ks, pid
            return self._ks

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)

    def close(self) -> None:
        with self._lock:
            if self._ks is not None and self._pid == os.getpid() and self._owned:
                self._ks.close()
            if self._owned:
                self._ks = None


def _accepts_lock_mode() -> bool:
    import inspect

    from hsm.keystore import KeyStore

    try:
        return "lock_mode" in inspect.signature(KeyStore.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    keystore: LazyKeyStore
    auth: AuthService
    audit: AuditLog
    extras: dict[str, Any] = field(default_factory=dict)


def build_services(settings: Settings, *, token_config: TokenConfig | None = None, engine: Engine | None = None,
                   keystore: Any = None) -> Services:
    """Wire the collaborators. ``keystore`` injects an already-open KeyStore (tests, embedding)."""
    engine = engine or db.make_engine(settings.effective_database_url,
                                      sqlite_synchronous=settings.sqlite_synchronous)
    sessions = db.session_factory(engine)
    ks = LazyKeyStore(settings, token_config=token_config, keystore=keystore)
    return Services(
        settings=settings,
        engine=engine,
        sessions=sessions,
        keystore=ks,
        auth=AuthService(sessions, default_ttl=settings.token_ttl, max_ttl=settings.token_max_ttl,
                         cache_ttl=max(0, settings.auth_cache_ttl),
                         # the workers of this instance share its data directory (see IdentityCache)
                         cache_signal=settings.data_path / "auth-cache.signal" if settings.data_path.is_dir() else None),
        audit=AuditLog(sessions, ks, AUDIT_MAC_KEY, batch_max=max(1, settings.audit_batch_max),
                       journal_dir=settings.data_path / "audit-journal" if settings.audit_sync == "journal" else None,
                       fold_interval=max(1, settings.audit_fold_ms) / 1000),
    )
