"""TPM fixtures for the hsm tests: private swtpm instances (see tests/tpmsim.py).

Tests that need a TPM are marked ``@pytest.mark.tpm`` and skip only when the swtpm binary is
absent; every other missing piece (tpm2-abrmd, dbus-daemon, tpm2-tools, tpm2_ptool) is a failure.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import tpmsim


def _require_swtpm() -> None:
    if not tpmsim.have_swtpm():
        pytest.skip("swtpm is not installed (apt-get install swtpm swtpm-tools)")


@pytest.fixture
def swtpm() -> Iterator[tpmsim.Swtpm]:
    """A fresh TPM for one test (about 30 ms to start and stop)."""
    _require_swtpm()
    with tpmsim.swtpm() as tpm:
        yield tpm


@pytest.fixture
def swtpm_state(tmp_path: Path) -> Path:
    """A state directory for tests that power-cycle a TPM with ``tpmsim.swtpm(state_dir=...)``."""
    _require_swtpm()
    d = tmp_path / "swtpm-state"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture(scope="session")
def tpm_abrmd() -> Iterator[tpmsim.Abrmd]:
    """One swtpm + private dbus-daemon + tpm2-abrmd for the whole test session.

    Session-scoped on purpose: the tabrmd TCTI connects through GLib's per-process session-bus
    singleton, and a connection that outlives its bus (a loaded PKCS#11 module keeps one open)
    makes later connections to a *different* private bus fail in the same process. The
    process's DBUS_SESSION_BUS_ADDRESS points at this bus while the fixture is alive.
    """
    _require_swtpm()
    with tpmsim.swtpm_with_abrmd() as rm, rm.activated():
        yield rm
