"""Private TPM 2.0 simulators for tests: swtpm, optionally fronted by tpm2-abrmd on a private D-Bus.

Usage::

    from tests import tpmsim

    with tpmsim.swtpm() as tpm:                       # fresh state in a temporary directory
        TpmSealer(tpm.tcti).seal(b"...")              # tpm.tcti == "swtpm:host=127.0.0.1,port=N"

    with tpmsim.swtpm(state_dir=d) as tpm: ...        # state kept in ``d``: a later swtpm(state_dir=d)
    with tpmsim.swtpm(state_dir=d) as tpm: ...        # is the same TPM after an orderly power cycle

    with tpmsim.swtpm() as tpm, tpmsim.abrmd(tpm) as rm:
        rm.tcti                                       # "tabrmd:bus_type=session"
        rm.env                                        # DBUS_SESSION_BUS_ADDRESS, TPM2TOOLS_TCTI for subprocesses
        with rm.activated(): ...                      # ...and in os.environ for in-process TCTIs

Contract:

* Every process is a direct child started with ``subprocess.Popen`` in its own session (a
  terminal Ctrl-C reaches pytest, not the simulator, so the orderly shutdown below still runs).
* Ports are random free ports on 127.0.0.1. The swtpm TCTI always talks to the control channel
  on ``port + 1``, so two adjacent free ports are chosen; a lost race (the port was taken between
  the check and swtpm's bind) is detected and retried with other ports.
* Start-up and shutdown waits are bounded (``start_timeout``, :data:`STOP_TIMEOUT`); a hung
  process is killed with SIGKILL rather than waited for forever.
* Exit order (also on exceptions, including KeyboardInterrupt): tpm2-abrmd (so it no longer
  holds the swtpm connection), then ``TPM2_Shutdown(CLEAR)`` straight to swtpm — an orderly
  shutdown, so restarts on the same state never count as DA failures — then swtpm, then
  dbus-daemon. Each step runs even if an earlier one failed.
* Last resorts so a test run leaves no processes behind: an ``atexit`` hook kills whatever is
  still registered in :func:`live_processes` (e.g. a generator that was never closed), and on
  Linux every child gets ``PR_SET_PDEATHSIG(SIGKILL)``, so even a SIGKILLed pytest takes its
  simulators with it (start them from the main thread: the signal fires when the *thread* that
  forked them exits).
* In-process ``tabrmd`` TCTIs (tpm2-pytss, a loaded libtpm2_pkcs11.so) connect through GLib's
  per-process session-bus singleton, read from ``DBUS_SESSION_BUS_ADDRESS`` at first use. If a
  connection outlives its bus (a failed connect, or a PKCS#11 module that keeps its context), a
  later *different* private bus cannot be reached from the same process: share one
  :func:`abrmd` per test session for in-process use (tests/hsm/conftest.py ``tpm_abrmd``).
  Subprocesses (tpm2-tools, tpm2_ptool) are unaffected: pass them :attr:`Abrmd.env`.
* PCRs reset at every start (``--flags startup-clear``): seal against values you can reproduce.
* Raw swtpm has 3 transient object slots and no resource manager: flush what you load, or use
  :func:`abrmd`. :func:`flush_transients` clears the slots after a crashed test.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

#: Seconds to wait for a process to exit after SIGTERM before SIGKILL, and again after SIGKILL.
STOP_TIMEOUT: Final = 5.0
#: Seconds a tpm2-tools helper (tpm2_shutdown, tpm2_flushcontext) may take.
TOOL_TIMEOUT: Final = 10.0
#: The D-Bus name tpm2-abrmd owns (its default).
ABRMD_BUS_NAME: Final = "com.intel.tss2.Tabrmd"

_PORT_ATTEMPTS: Final = 8
_POLL: Final = 0.02


def have_swtpm() -> bool:
    """True when the swtpm binary is on PATH (tests skip when it is not)."""
    return shutil.which("swtpm") is not None


# --------------------------------------------------------------------------------------------
# process bookkeeping

_live: dict[int, subprocess.Popen[bytes]] = {}
_live_lock = threading.Lock()


def live_processes() -> list[int]:
    """PIDs of the simulator processes started by this module and not yet reaped."""
    with _live_lock:
        return [pid for pid, p in _live.items() if p.poll() is None]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # PR_SET_PDEATHSIG(SIGKILL): if pytest itself is killed (SIGKILL/SIGTERM, no finally, no atexit),
    # the kernel still kills the simulator. Linux only; elsewhere this is a no-op.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _spawn(argv: list[str], *, env: Mapping[str, str] | None, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None, start_new_session=True, close_fds=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    with _live_lock:
        _live[proc.pid] = proc
    log.debug("started %s (pid %d)", argv[0], proc.pid)
    return proc


def _stop(proc: subprocess.Popen[bytes], name: str, *, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, bounded wait, SIGKILL, bounded wait; always unregisters the process."""
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.1f s; killing it", name, proc.pid, timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout)
    finally:
        with _live_lock:
            if proc.poll() is not None:
                _live.pop(proc.pid, None)


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - last resort only
    with _live_lock:
        procs = list(_live.values())
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT)


def _wait_until(predicate: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], deadline: float,
                log_path: Path) -> None:
    while True:
        if proc.poll() is not None:
            raise SimulatorError(f"{what}: process exited with status {proc.returncode}: {_tail(log_path)}")
        if predicate():
            return
        if time.monotonic() > deadline:
            raise SimulatorError(f"{what}: not ready in time: {_tail(log_path)}")
        time.sleep(_POLL)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) or "(no output)"
    except OSError:
        return "(no log)"


class SimulatorError(RuntimeError):
    """A simulator process failed to start or to become ready."""


# --------------------------------------------------------------------------------------------
# swtpm


@dataclass(frozen=True)
class Swtpm:
    """A running swtpm. ``tcti`` is the TCTI string for ESAPI, tpm2-tools and tpm2-abrmd."""

    state_dir: Path
    port: int
    pid: int
    log_path: Path

    @property
    def ctrl_port(self) -> int:
        return self.port + 1

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"


def _port_pair_free(port: int) -> bool:
    for p in (port, port + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _choose_port() -> int:
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 60000, 2)
        if _port_pair_free(port):
            return port
    raise SimulatorError("no two adjacent free TCP ports found on 127.0.0.1")


def _tool(argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=dict(env), capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                          check=False, stdin=subprocess.DEVNULL)


def _tools_env(tcti: str) -> dict[str, str]:
    return dict(os.environ, TPM2TOOLS_TCTI=tcti, TSS2_LOG="all+none")


def orderly_shutdown(tcti: str) -> bool:
    """Send ``TPM2_Shutdown(CLEAR)`` over ``tcti`` (bounded); False if it could not be delivered."""
    exe = shutil.which("tpm2_shutdown")
    if exe is not None:
        try:
            r = _tool([exe, "-c"], _tools_env(tcti))
        except subprocess.TimeoutExpired:
            log.warning("tpm2_shutdown over %s timed out", tcti)
            return False
        if r.returncode != 0:
            log.warning("tpm2_shutdown over %s failed: %s", tcti, r.stderr.strip()[-300:])
        return r.returncode == 0
    from tpm2_pytss import ESAPI  # fallback when tpm2-tools is absent
    from tpm2_pytss.constants import TPM2_SU

    try:
        with ESAPI(tcti) as ectx:
            ectx.shutdown(TPM2_SU.CLEAR)
        return True
    except Exception as exc:  # noqa: BLE001 - best effort during teardown
        log.warning("TPM2_Shutdown over %s failed: %s", tcti, exc)
        return False


def flush_transients(tcti: str) -> None:
    """Flush every transient object and session (``tpm2_flushcontext -t -l -s``)."""
    env = _tools_env(tcti)
    for flag in ("-t", "-l", "-s"):
        r = _tool(["tpm2_flushcontext", flag], env)
        if r.returncode != 0:
            raise SimulatorError(f"tpm2_flushcontext {flag} failed: {r.stderr.strip()[-300:]}")


@contextlib.contextmanager
def swtpm(state_dir: Path | None = None, *, start_timeout: float = 10.0) -> Iterator[Swtpm]:
    """Run a private swtpm (TPM 2.0) on random free ports of 127.0.0.1.

    ``state_dir`` keeps the TPM's NV state (seeds, persistent objects) so a later call with the
    same directory gets the same TPM; by default a temporary directory is used and removed.
    On exit: TPM2_Shutdown(CLEAR), then SIGTERM/SIGKILL, always bounded.
    """
    exe = shutil.which("swtpm")
    if exe is None:
        raise SimulatorError("swtpm is not installed (apt-get install swtpm swtpm-tools)")
    own_dir = state_dir is None
    state = Path(tempfile.mkdtemp(prefix="csm-swtpm-")) if state_dir is None else Path(state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = state / "swtpm.log"
    proc: subprocess.Popen[bytes] | None = None
    tpm: Swtpm | None = None
    try:
        for attempt in range(_PORT_ATTEMPTS):
            port = _choose_port()
            proc = _spawn(
                [exe, "socket", "--tpm2",
                 "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                 "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                 "--tpmstate", f"dir={state},mode=0600",
                 "--flags", "not-need-init,startup-clear",
                 "--log", f"file={log_path},level=1"],
                env=None, log_path=log_path,
            )
            deadline = time.monotonic() + start_timeout
            try:
                _wait_until(lambda: _accepts(port + 1) and _accepts(port), "swtpm", proc, deadline, log_path)
            except SimulatorError:
                _stop(proc, "swtpm")
                proc = None
                if attempt + 1 == _PORT_ATTEMPTS:
                    raise
                log.debug("swtpm did not come up on port %d; retrying with other ports", port)
                continue
            tpm = Swtpm(state_dir=state, port=port, pid=proc.pid, log_path=log_path)
            break
        assert tpm is not None
        yield tpm
    finally:
        try:
            if proc is not None and proc.poll() is None and tpm is not None:
                orderly_shutdown(tpm.tcti)
        finally:
            if proc is not None:
                _stop(proc, "swtpm")
            if own_dir:
                shutil.rmtree(state, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# dbus-daemon + tpm2-abrmd


@dataclass(frozen=True)
class Abrmd:
    """tpm2-abrmd in front of a :class:`Swtpm`, on a private D-Bus session bus."""

    tpm: Swtpm
    dbus_address: str
    dbus_pid: int
    abrmd_pid: int
    tcti: str = "tabrmd:bus_type=session"
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` plus what subprocesses (tpm2-tools, tpm2_ptool) need to reach this TPM."""
        return dict(os.environ, DBUS_SESSION_BUS_ADDRESS=self.dbus_address, TPM2TOOLS_TCTI=self.tcti,
                    **self.extra_env)

    @contextlib.contextmanager
    def activated(self) -> Iterator[None]:
        """Point this process's session bus (used by in-process ``tabrmd`` TCTIs) at this bus.

        The tabrmd TCTI reads ``DBUS_SESSION_BUS_ADDRESS`` when it connects; the previous value is
        restored on exit.
        """
        old = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        os.environ["DBUS_SESSION_BUS_ADDRESS"] = self.dbus_address
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
            else:
                os.environ["DBUS_SESSION_BUS_ADDRESS"] = old


def _bus_has_owner(address: str, name: str) -> bool:
    try:
        r = subprocess.run(
            ["dbus-send", f"--bus={address}", "--dest=org.freedesktop.DBus", "--print-reply",
             "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner", f"string:{name}"],
            capture_output=True, text=True, timeout=2.0, check=False, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and "boolean true" in r.stdout


def _socket_connectable(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


@contextlib.contextmanager
def abrmd(tpm: Swtpm, *, start_timeout: float = 15.0) -> Iterator[Abrmd]:
    """Run a private dbus-daemon and tpm2-abrmd (``--session --flush-all``) in front of ``tpm``.

    Nothing touches the system or the user's session bus: the bus socket lives in a fresh
    short temporary directory (unix socket paths are limited to 107 bytes). Exit order:
    abrmd, TPM2_Shutdown(CLEAR) straight to swtpm (abrmd no longer holds its connection),
    dbus-daemon. The swtpm itself is stopped by its own context manager afterwards.
    """
    for tool in ("dbus-daemon", "tpm2-abrmd", "dbus-send"):
        if shutil.which(tool) is None:
            raise SimulatorError(f"{tool} is not installed (apt-get install dbus-daemon dbus-bin tpm2-abrmd "
                                 "libtss2-tcti-tabrmd0)")
    run_dir = Path(tempfile.mkdtemp(prefix="csm-bus-"))
    sock = run_dir / "bus"
    address = f"unix:path={sock}"
    dbus_proc: subprocess.Popen[bytes] | None = None
    abrmd_proc: subprocess.Popen[bytes] | None = None
    started_abrmd = False
    try:
        deadline = time.monotonic() + start_timeout
        dbus_log = run_dir / "dbus.log"
        dbus_proc = _spawn(["dbus-daemon", "--session", f"--address={address}", "--nofork", "--nopidfile",
                            "--nosyslog"], env=None, log_path=dbus_log)
        _wait_until(lambda: _socket_connectable(sock), "dbus-daemon", dbus_proc, deadline, dbus_log)

        env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=address, TSS2_LOG="all+none")
        argv = ["tpm2-abrmd", "--session", "--flush-all", f"--tcti={tpm.tcti}"]
        if os.geteuid() == 0:
            argv.append("--allow-root")
        abrmd_log = run_dir / "abrmd.log"
        abrmd_proc = _spawn(argv, env=env, log_path=abrmd_log)
        started_abrmd = True
        _wait_until(lambda: _bus_has_owner(address, ABRMD_BUS_NAME), "tpm2-abrmd", abrmd_proc, deadline,
                    abrmd_log)
        yield Abrmd(tpm=tpm, dbus_address=address, dbus_pid=dbus_proc.pid, abrmd_pid=abrmd_proc.pid)
    finally:
        try:
            if abrmd_proc is not None:
                # abrmd keeps no state worth an orderly exit and takes ~3 s to honour SIGTERM.
                _stop(abrmd_proc, "tpm2-abrmd", timeout=1.0)
        finally:
            try:
                if started_abrmd:
                    orderly_shutdown(tpm.tcti)
            finally:
                try:
                    if dbus_proc is not None:
                        _stop(dbus_proc, "dbus-daemon")
                finally:
                    shutil.rmtree(run_dir, ignore_errors=True)


@contextlib.contextmanager
def swtpm_with_abrmd(state_dir: Path | None = None) -> Iterator[Abrmd]:
    """:func:`swtpm` and :func:`abrmd` in one ``with``."""
    with swtpm(state_dir) as tpm, abrmd(tpm) as rm:
        yield rm


# --------------------------------------------------------------------------------------------
# helpers for tests


def pcr_extend(tcti: str, index: int, data: bytes = b"csm-test") -> None:
    """Extend PCR ``index`` in every allocated bank (``tpm2_pcrevent``-style) via tpm2-pytss."""
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import ESYS_TR

    with ESAPI(tcti) as ectx:
        ectx.pcr_event(ESYS_TR.PCR0 + index, data)


def tpm_property(tcti: str, name: str) -> int:
    """A TPM2_PT property by name (e.g. ``"LOCKOUT_COUNTER"``, ``"HR_TRANSIENT_MIN"``)."""
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import TPM2_CAP, TPM2_PT

    prop = getattr(TPM2_PT, name)
    with ESAPI(tcti) as ectx:
        _more, data = ectx.get_capability(TPM2_CAP.TPM_PROPERTIES, prop, 1)
    for p in data.data.tpmProperties:
        if p.property == prop:
            return int(p.value)
    raise KeyError(name)


def loaded_transients(tcti: str) -> int:
    """Number of transient objects loaded in the TPM (handles 0x80xxxxxx)."""
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import TPM2_CAP, TPM2_HT

    with ESAPI(tcti) as ectx:
        _more, data = ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HT.TRANSIENT << 24, 64)
    return len(data.data.handles)
