"""`csm init`: everything a first start needs, idempotently.

1. the data directory (0700);
2. for SoftHSMv2 (the embedded default): a token under ``<data_dir>/softhsm`` whose user PIN is
   sealed to the TPM when one is available, otherwise kept in a 0600 file (reported loudly);
3. the database schema (Alembic);
4. the service's own keys in the token (audit MAC key, bootstrap CA key);
5. the root token, written once to ``<data_dir>/root-token`` (0600);
6. the TLS server certificate.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hsm import KeyType
from hsm.softhsm import DEFAULT_MODULE, init_token, token_exists, write_softhsm_conf

from . import db
from .config import Settings
from .errors import ConfigError
from .runtime import AUDIT_MAC_KEY, Services, build_services, prepare_module_env
from .tls import ensure_service_cert

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class InitResult:
    data_dir: Path
    root_token_file: Path | None  # set when a root token was created by this run
    pin_protection: str
    created_token: bool


def _write_secret_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def _detect_tcti(settings: Settings) -> str | None:
    if settings.hsm_tpm_tcti:
        return settings.hsm_tpm_tcti
    if os.path.exists("/dev/tpmrm0") and os.access("/dev/tpmrm0", os.R_OK | os.W_OK):
        return "device:/dev/tpmrm0"
    return None


def ensure_token(settings: Settings, progress: Progress) -> tuple[str, bool]:
    """Create the embedded SoftHSM token if needed; returns (PIN protection description, created)."""
    from hsm.pin import provision_pin

    recorded = settings.data_path / "hsm" / "pin-source"
    if settings.hsm_module != DEFAULT_MODULE:
        if not (settings.hsm_pin_source or recorded.exists()):
            raise SystemExit("an external PKCS#11 module needs --hsm-pin-source (tpm:…, env:VAR or file:PATH)")
        return "configured PIN source", False
    conf = write_softhsm_conf(settings.softhsm_conf.parent)
    os.environ.setdefault("SOFTHSM2_CONF", str(conf))
    conf = Path(os.environ["SOFTHSM2_CONF"])
    if _token_shows(conf, settings.hsm_token_label, created_before=recorded.exists()):
        return (recorded.read_text().strip().split(":", 1)[0] if recorded.exists() else "configured"), False
    tcti = _detect_tcti(settings)
    progress(f"creating SoftHSM token {settings.hsm_token_label!r} in {conf.parent}"
             + (f", sealing its PIN to the TPM at {tcti}" if tcti else ""))
    if settings.hsm_tpm_pcrs and not tcti:
        raise ConfigError("hsm_tpm_pcrs needs a TPM: set --hsm-tpm-tcti (no /dev/tpmrm0 here)")
    source, description = provision_pin(settings.data_path / "hsm", tcti, settings.hsm_tpm_pcrs or None)
    so_pin = secrets.token_urlsafe(24)  # never stored: the SO role is not used by csm
    init_token(conf, settings.hsm_token_label, so_pin, source.get_pin())
    recorded.write_text(source.spec() + "\n")
    recorded.chmod(0o600)
    return description, True


def _token_shows(conf: Path, label: str, *, created_before: bool, wait: float = 15.0) -> bool:
    """Whether the token is there. One this data directory created before (its PIN source is
    recorded) may briefly not show while another process rewrites its files: look again for
    ``wait`` seconds, then refuse — a new token would not hold this deployment's keys, and its
    PIN would replace the recorded one."""
    if token_exists(conf, label):
        return True
    if not created_before:
        return False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if token_exists(conf, label):
            log.warning("SoftHSM token %r showed only on a later look", label)
            return True
    raise ConfigError(f"the SoftHSM token {label!r} this data directory created is not readable in "
                      f"{conf.parent}; not creating a new one (it would not hold this deployment's keys). "
                      "Restore the token directory, or move the data directory away to start afresh.")


def run_init(settings: Settings, progress: Progress = lambda _m: None) -> tuple[InitResult, Services]:
    data = settings.data_path
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data, 0o700)
    protection, created = ensure_token(settings, progress)
    prepare_module_env(settings)
    svc = build_services(settings)
    progress("applying database migrations")
    db.migrate(svc.engine)
    ks = svc.keystore.get()
    if not ks.exists(AUDIT_MAC_KEY):
        progress("generating the audit MAC key in the token")
        ks.generate(AUDIT_MAC_KEY, KeyType.AES_256)
    root_file: Path | None = None
    if not svc.auth.has_root_token():
        token, _info = svc.auth.create_token(root=True, ttl=settings.token_max_ttl, max_ttl=settings.token_max_ttl,
                                             display_name="root", renewable=True)
        if settings.root_token_path.exists():
            settings.root_token_path.unlink()
        _write_secret_file(settings.root_token_path, token)
        root_file = settings.root_token_path
        progress(f"root token written to {root_file} (mode 0600)")
    if not settings.plain_http:
        files = ensure_service_cert(settings, svc)
        if files.reissued:
            by = f"CA {settings.tls_ca} ({settings.tls_profile})" if settings.tls_ca else "the bootstrap CA"
            progress(f"TLS server certificate issued by {by}, valid until {files.not_after:%Y-%m-%d %H:%M} UTC")
    return InitResult(data, root_file, protection, created), svc
