"""Helpers shared by the benchmark scripts: ports, process groups, CPU accounting from /proc.

Servers are started with ``start_new_session=True``, so a server's whole process tree (master,
workers, their threads) is one session: :func:`tree_cpu` sums its CPU and :func:`stop` ends it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def tree_cpu(session: int) -> float:
    """CPU seconds (user + system) of every live process in ``session``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # field 6 (session id), counted after the comm field
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def machine_busy() -> float:
    """CPU seconds the whole machine spent not idle (all cores)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]  # idle + iowait
    return (sum(vals[:8]) - idle) / TICK


def wait_quiet(sessions: list[int], limit: float = 10.0, threshold: float = 0.2) -> None:
    """Wait (at most ``limit`` s) until load outside ``sessions`` drops below ``threshold`` cores."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        b0, s0, t0 = machine_busy(), sum(tree_cpu(x) for x in sessions), time.monotonic()
        time.sleep(1.0)
        other = (machine_busy() - b0 - (sum(tree_cpu(x) for x in sessions) - s0)) / (time.monotonic() - t0)
        if other < threshold:
            return
