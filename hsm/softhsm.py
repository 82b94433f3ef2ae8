"""Provisioning helpers for SoftHSMv2 tokens (the embedded default and the tests).

python-pkcs11 has no C_InitToken, so tokens are created with ``softhsm2-util``.
SoftHSM reads ``SOFTHSM2_CONF`` when its module is loaded: set it before the first
``KeyStore.open()`` in the process.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .errors import HsmError, TokenUnavailable

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def write_softhsm_conf(directory: Path) -> Path:
    """Create ``directory/tokens`` and ``directory/softhsm2.conf``; return the conf path."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tokens = directory / "tokens"
    tokens.mkdir(exist_ok=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    text = (
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)
        conf.chmod(0o600)
    return conf


def token_exists(conf: Path, label: str) -> bool:
    out = _util(conf, ["--show-slots"]).stdout
    return any(line.strip() == f"Label:            {label}" or line.strip().endswith(f": {label}")
               for line in out.splitlines() if "Label" in line)


def init_token(conf: Path, label: str, so_pin: str, pin: str) -> None:
    """Initialise a new token labelled ``label`` in a free slot (PINs go through argv of a
    short-lived local process; softhsm2-util has no other non-interactive way)."""
    _util(conf, ["--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", pin])


def _util(conf: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("softhsm2-util")
    if exe is None:
        raise TokenUnavailable("softhsm2-util not found: install the softhsm2 package")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    proc = subprocess.run([exe, *args], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        # softhsm2-util never echoes PINs in its messages; keep only its first line.
        first = (proc.stderr or proc.stdout).strip().splitlines()[:1]
        raise HsmError(f"softhsm2-util {args[0]} failed: {first[0] if first else proc.returncode}")
    return proc
