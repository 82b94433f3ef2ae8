"""Secrets throughput: csm vs OpenBao (persistent + audited, and dev mode), same run, same wrk load.

    .venv/bin/python bench/secrets.py [--duration 6] [--rounds 3] [--connections 16]

* csm is started the way the README does: ``csm serve`` on a fresh data directory, with
  ``--plain-http --host 127.0.0.1`` (plain HTTP on loopback, like the OpenBao listeners here;
  no TLS on either side). Every value is sealed with AES-256-GCM in the SoftHSM token and every
  request is audited (hash chain + token MAC, fail-closed).
* OpenBao "persistent": integrated storage (raft, fsync per commit) in a temp dir, initialised
  and unsealed by this script, KV v2 at ``secret/``, and a **file audit device** declared in its
  config. OpenBao "dev": in-memory storage, no audit.
* Load: ``wrk -t1 -c16 --latency`` over 1000 keys, secrets of 5 pairs (198 bytes of JSON, "about 200" as the issue asks);
  write = a new version of an existing key, read = the latest version of the same keys.
* Fairness on a shared machine: the three servers run side by side (an idle server costs
  nothing) and the runs are **interleaved**: each round measures every system once per
  operation, in a rotating order, after a 2 s warm-up. Figures are medians over the rounds.
  For every run the script also records the CPU used by the server's process tree, by wrk and
  by everything else ("other", from /proc/stat): CPU per request does not depend on what
  else the machine was doing, throughput does. Before each run it waits (at most 10 s) for
  the other load to drop below 0.2 core; runs with more than 0.3 core of other load are
  marked ``*``.

Prints req/s, p50/p99 latency and server CPU per request for each system and operation, and
the ratios csm / OpenBao. Bounded: about 3 minutes with the defaults.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ would come first on sys.path and this file would shadow the stdlib's secrets.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import requests  # noqa: E402

from bench._harness import (  # noqa: E402
    PY,
    ROOT,
    Result,
    free_port,
    line,
    run_wrk,
    start_bao_dev as _bao_dev,
    start_bao_raft,
    stop,
    wait_http,
    wait_quiet,
)

KEYS = 1000


def secret_values(i: int) -> dict[str, object]:
    return {"username": f"svc-account-{i:04d}-payments-api", "password": "Xk9#mP2$vL7@qR4!wN8&zT3^bY6*cF1%hJ5~dS0+gH7=kL2?",
            "host": "postgres-primary.eu-west-1.db.internal.example.com", "port": 5432, "tls": True}


BODY_BYTES = len(json.dumps(secret_values(0)))


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


def wrk(base: str, method: str, prefix: str, token_header: str, token: str, body: str | None,
        duration: int, conns: int, workdir: Path, session: int = 0) -> Result:
    script = workdir / f"wrk-{method}.lua"
    script.write_text(LUA % {"method": method, "prefix": prefix, "token_header": token_header, "token": token,
                             "body": json.dumps(body) if body else "nil", "keys": KEYS})
    return run_wrk(base, script, duration, conns, session)


@dataclass
class Target:
    """A running system under test: how to write and read one of the 1000 keys."""

    name: str
    base: str
    write: tuple[str, str, str]  # method, path prefix, body
    read_prefix: str
    token_header: str
    token: str
    session: int
    results: dict[str, list[Result]] = field(default_factory=lambda: {"write": [], "read": []})

    def run(self, op: str, duration: int, conns: int, workdir: Path) -> Result:
        method, prefix, body = self.write if op == "write" else ("GET", self.read_prefix, None)
        wrk(self.base, method, prefix, self.token_header, self.token, body, 2, conns, workdir)  # warm-up
        r = wrk(self.base, method, prefix, self.token_header, self.token, body, duration, conns, workdir,
                self.session)
        self.results[op].append(r)
        return r

    def median(self, op: str) -> Result:
        return Result.median(self.results[op])


# ---- csm ------------------------------------------------------------------------------------
def start_csm(workdir: Path, extra: list[str], stack: ExitStack) -> Target:
    data = workdir / "csm-data"
    port = free_port()
    log = open(workdir / "csm.log", "wb")  # noqa: SIM115
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    proc = subprocess.Popen([PY, "-m", "sms.cli", "serve", "--data-dir", str(data), "--plain-http", "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "WARNING", *extra],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stack.callback(log.close)
    stack.callback(stop, proc)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/v1/sys/ready", (200,), 90, proc)
    token = (data / "root-token").read_text().strip()
    s = requests.Session()
    s.headers["X-CSM-Token"] = token
    s.post(base + "/v1/domains", json={"name": "bench"}).raise_for_status()
    for i in range(KEYS):
        s.post(base + "/v1/domains/bench/secrets", json={"name": f"k{i}", "values": secret_values(i)}
               ).raise_for_status()
    body = json.dumps({"values": secret_values(7)})
    storage = "PostgreSQL" if any(a.startswith(("--database-url", "postgresql")) for a in extra) else "SQLite"
    return Target(f"csm ({storage}, token AES-GCM)", base, ("PUT", "/v1/domains/bench/secrets/k", body),
                  "/v1/domains/bench/secrets/k", "X-CSM-Token", token, proc.pid)


# ---- OpenBao --------------------------------------------------------------------------------
def _bao_fill(base: str, token: str) -> None:
    s = requests.Session()
    s.headers["X-Vault-Token"] = token
    for i in range(KEYS):
        r = s.post(f"{base}/v1/secret/data/bench/k{i}", json={"data": secret_values(i)})
        r.raise_for_status()


def start_bao_dev(workdir: Path, stack: ExitStack) -> Target:
    proc, base = _bao_dev(workdir)
    stack.callback(stop, proc)
    _bao_fill(base, "root")
    body = json.dumps({"data": secret_values(7)})
    return Target("OpenBao dev (inmem, no audit)", base, ("POST", "/v1/secret/data/bench/k", body),
                  "/v1/secret/data/bench/k", "X-Vault-Token", "root", proc.pid)


def start_bao_persistent(workdir: Path, stack: ExitStack) -> Target:
    proc, base, token = start_bao_raft(workdir)
    stack.callback(stop, proc)
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
    return Target("OpenBao raft + file audit", base, ("POST", "/v1/secret/data/bench/k", body),
                  "/v1/secret/data/bench/k", "X-Vault-Token", token, proc.pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=6, help="seconds per measured run (default 6)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians (default 3)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--csm-arg", action="append", default=[], help="extra argument for csm serve (repeatable)")
    ap.add_argument("--only", choices=("csm", "bao"), help="run one side only (no ratios)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    # A TERM (timeout, Ctrl-C in a pipeline) still stops the servers this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="csm-bench-secrets-"))
    started = time.monotonic()
    print(f"secrets of 5 pairs, {BODY_BYTES} bytes of JSON; wrk -t1 -c{args.connections}, {args.duration} s per run, "
          f"{args.rounds} interleaved rounds")
    starters: list[tuple[str, Callable[[ExitStack], Target]]] = []
    if args.only != "bao":
        starters.append(("csm", lambda st: start_csm(workdir, args.csm_arg, st)))
    if args.only != "csm":
        starters.append(("raft", lambda st: start_bao_persistent(workdir, st)))
        starters.append(("dev", lambda st: start_bao_dev(workdir, st)))
    try:
        with ExitStack() as stack:
            targets = {key: start(stack) for key, start in starters}
            order = list(targets.values())
            sessions = [t.session for t in order]
            for rnd in range(args.rounds):
                rot = order[rnd % len(order):] + order[:rnd % len(order)]
                for op in ("write", "read"):
                    for t in rot:
                        wait_quiet(sessions)
                        r = t.run(op, args.duration, args.connections, workdir)
                        print(line(t.name, op, r, " *" if r.noisy else ""), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}")
    print("\nmedians over the rounds:")
    for t in targets.values():
        for op in ("write", "read"):
            print(line(t.name, op, t.median(op)))
    if args.only:
        return
    csm, raft, dev = targets["csm"], targets["raft"], targets["dev"]
    print("\nratios (csm / OpenBao), throughput and server CPU per request:")
    for op in ("write", "read"):
        c, r, d = csm.median(op), raft.median(op), dev.median(op)
        print(f"  {op:<5}  vs raft+audit {c.rps / r.rps:5.2f}x   vs dev {c.rps / d.rps:5.2f}x   "
              f"(CPU/req: csm {c.server_ms_per_req:.2f} ms, raft {r.server_ms_per_req:.2f} ms, "
              f"dev {d.server_ms_per_req:.2f} ms)")
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
