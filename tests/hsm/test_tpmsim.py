"""tests/tpmsim: the simulators start, answer, and leave no process behind."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import tpmsim

pytestmark = [pytest.mark.tpm, pytest.mark.timeout(60)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie not yet reaped by init still answers kill(0); it is dead for our purpose
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Boom(Exception):
    pass


def test_swtpm_stops_and_cleans_up_even_when_the_body_raises(swtpm_state: Path) -> None:
    with pytest.raises(Boom), tpmsim.swtpm() as tpm:
        pid, state = tpm.pid, tpm.state_dir
        assert _alive(pid)
        assert tpmsim.tpm_property(tpm.tcti, "LOCKOUT_COUNTER") == 0
        raise Boom
    assert not _alive(pid)
    assert not state.exists()  # temporary state is removed
    assert pid not in tpmsim.live_processes()


def test_given_state_dir_is_kept(swtpm_state: Path) -> None:
    with tpmsim.swtpm(state_dir=swtpm_state):
        pass
    assert (swtpm_state / "tpm2-00.permall").exists()


def test_abrmd_stack_serves_tpm2_tools_and_stops_in_order() -> None:
    if not tpmsim.have_swtpm():
        pytest.skip("swtpm is not installed")
    with pytest.raises(Boom), tpmsim.swtpm_with_abrmd() as rm:
        pids = (rm.tpm.pid, rm.dbus_pid, rm.abrmd_pid)
        assert all(_alive(p) for p in pids)
        r = subprocess.run(["tpm2_getrandom", "--hex", "8"], env=rm.env, capture_output=True, text=True,
                           timeout=10, check=False)
        assert r.returncode == 0 and len(r.stdout.strip()) == 16, r.stderr
        raise Boom
    assert not any(_alive(p) for p in pids)
    assert not set(pids) & set(tpmsim.live_processes())


def test_two_simulators_run_side_by_side() -> None:
    if not tpmsim.have_swtpm():
        pytest.skip("swtpm is not installed")
    with tpmsim.swtpm() as a, tpmsim.swtpm() as b:
        assert a.port != b.port
        assert tpmsim.loaded_transients(a.tcti) == tpmsim.loaded_transients(b.tcti) == 0
