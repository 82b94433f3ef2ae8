"""Shared fixtures: a real SoftHSMv2 token for the whole session.

SoftHSM reads SOFTHSM2_CONF when the module is first loaded, so the test session uses one
configuration directory (set here, before anything loads the module) holding several tokens.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsm.softhsm import DEFAULT_MODULE, init_token, write_softhsm_conf
from hsm.types import TokenConfig

_SOFTHSM_DIR = Path(tempfile.mkdtemp(prefix="csm-softhsm-"))
_SOFTHSM_CONF = write_softhsm_conf(_SOFTHSM_DIR)
os.environ["SOFTHSM2_CONF"] = str(_SOFTHSM_CONF)

TEST_PIN = "user-" + secrets.token_hex(4)
TEST_SO_PIN = "so-" + secrets.token_hex(4)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SOFTHSM_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def softhsm_conf() -> Path:
    return _SOFTHSM_CONF


@pytest.fixture(scope="session")
def make_token():
    """Factory: create a fresh SoftHSM token with a unique label; returns its TokenConfig."""

    def _make(prefix: str = "t") -> TokenConfig:
        label = f"{prefix}-{secrets.token_hex(4)}"
        init_token(_SOFTHSM_CONF, label, TEST_SO_PIN, TEST_PIN)
        return TokenConfig(module_path=DEFAULT_MODULE, token_label=label, pin=TEST_PIN)

    return _make


@pytest.fixture(scope="session")
def token_config(make_token) -> TokenConfig:
    """One token shared by the session (keys get unique labels per test)."""
    return make_token("shared")


@pytest.fixture(scope="session")
def keystore(token_config) -> Iterator[object]:
    from hsm.keystore import KeyStore

    ks = KeyStore(token_config)
    ks.open()
    yield ks
    ks.close()


@pytest.fixture
def unique() -> str:
    return secrets.token_hex(6)
