"""Fault injection for SoftHSMv2 tokens: make a real token unavailable, then bring it back.

SoftHSM keeps each token in its own directory under ``directories.tokendir`` of the
``SOFTHSM2_CONF`` file. Moving that directory out of the tokendir (an atomic ``rename`` on the
same file system) makes the token vanish for every process using it: PKCS#11 calls on it fail
(``CKR_GENERAL_ERROR`` / ``CKR_OBJECT_HANDLE_INVALID``, which the key store turns into
``TokenUnavailable``), and a re-initialised module no longer lists it. Moving it back restores
it byte for byte; SoftHSM only sees it again after ``C_Finalize``/``C_Initialize``, which the key
store does by itself when it recovers. This was chosen over ``chmod`` (root ignores it) and
deleting/restoring files (slower, and racy with SoftHSM's own writes).

Usage (the web-layer tests can do the same with their own token)::

    from tests.hsm.faults import token_unavailable

    with token_unavailable(softhsm_conf, cfg.token_label):
        ...   # every key-store call on that token raises TokenUnavailable; status().available is False
    ...       # the token is back; the key store recovers on a later call (back-off: KeyStore(backoff=...))

    outage = TokenOutage(softhsm_conf, cfg.token_label)   # or step by step
    outage.start(); ...; outage.stop()

Only the named token is affected; other tokens of the same SoftHSM configuration keep working.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_LABEL_FIELD = 32  # CK_TOKEN_INFO.label: 32 bytes, blank padded


def softhsm_tokendir(conf: Path | str | None = None) -> Path:
    """The ``directories.tokendir`` of a SoftHSM config (default: ``$SOFTHSM2_CONF``)."""
    path = Path(conf or os.environ["SOFTHSM2_CONF"])
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "directories.tokendir":
            return Path(value.strip())
    raise LookupError(f"{path} has no directories.tokendir")


def token_directory(conf: Path | str | None, label: str) -> Path:
    """The directory holding the SoftHSM token labelled ``label`` (its ``token.object`` stores
    the label blank-padded to 32 bytes)."""
    needle = label.encode().ljust(_LABEL_FIELD, b" ")
    if len(needle) > _LABEL_FIELD:
        raise ValueError("a token label has at most 32 bytes")
    for candidate in sorted(softhsm_tokendir(conf).iterdir()):
        token_object = candidate / "token.object"
        if token_object.is_file() and needle in token_object.read_bytes():
            return candidate
    raise LookupError(f"no SoftHSM token labelled {label!r}")


class TokenOutage:
    """Take one SoftHSM token offline (``start``) and put it back (``stop``); idempotent."""

    def __init__(self, conf: Path | str | None, label: str) -> None:
        self.directory = token_directory(conf, label)
        # Outside the tokendir (or SoftHSM would find it again), on the same file system.
        self.parking = self.directory.parent.parent / f".offline-{self.directory.name}"
        self.active = False

    def start(self) -> None:
        if not self.active:
            os.rename(self.directory, self.parking)
            self.active = True

    def stop(self) -> None:
        if self.active:
            os.rename(self.parking, self.directory)
            self.active = False

    def __enter__(self) -> TokenOutage:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def token_unavailable(conf: Path | str | None, label: str) -> Iterator[TokenOutage]:
    """Inside the block the SoftHSM token ``label`` is gone; on exit it is restored."""
    with TokenOutage(conf, label) as outage:
        yield outage
