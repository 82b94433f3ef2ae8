"""Build the secrets service from the shell's Services (once per Services, lazily)."""
from __future__ import annotations

import threading
from typing import Any

from ..config import Settings
from ..errors import ConfigError
from ..runtime import Services
from .envelope import Envelope
from .limits import VERSIONS_MAX
from .service import SecretsService

_LOCK = threading.Lock()
EXTRA_KEY = "secrets"


def read_secret_source(spec: str, what: str) -> str:
    """Resolve ``env:VAR`` or ``file:PATH`` (the only forms a credential setting may take)."""
    import os

    kind, _, ref = spec.partition(":")
    if kind == "env" and ref:
        value = os.environ.get(ref)
        if not value:
            raise ConfigError(f"{what}: environment variable {ref} is not set")
        return value.strip()
    if kind == "file" and ref:
        try:
            with open(ref, encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            raise ConfigError(f"{what}: cannot read {ref}") from None
    raise ConfigError(f"{what} must be env:VAR or file:PATH")


def build_store(settings: Settings, svc: Services) -> Any:
    if settings.secrets_backend == "vault":
        from .backends.vault import VaultSecretStore

        if not settings.vault_addr:
            raise ConfigError("secrets_backend=vault needs vault_addr")
        token = read_secret_source(settings.vault_token_source, "vault_token_source")
        return VaultSecretStore(settings.vault_addr, token, mount=settings.vault_mount,
                                verify=settings.vault_ca_cert or True)
    from .backends.sql import SqlSecretStore

    return SqlSecretStore(svc.sessions)


def secrets_service(svc: Services) -> SecretsService:
    ss: SecretsService | None = svc.extras.get(EXTRA_KEY)
    if ss is not None:
        return ss
    with _LOCK:
        ss = svc.extras.get(EXTRA_KEY)
        if ss is None:
            s = svc.settings
            if not 1 <= s.secrets_max_versions <= VERSIONS_MAX:
                raise ConfigError(f"secrets_max_versions must be between 1 and {VERSIONS_MAX}")
            ss = SecretsService(build_store(s, svc), Envelope(svc.keystore), svc.sessions,
                                default_max_versions=s.secrets_max_versions,
                                ref_ttl_max=max(1, s.secrets_ref_ttl_max))
            svc.extras[EXTRA_KEY] = ss
    return ss
