"""CSR signing throughput: csm vs OpenBao PKI (persistent and dev), plus the raw token sign rate.

    .venv/bin/python bench/ca.py [--duration 8] [--connections 16] [--rounds 2]

* csm is started the way the README does: ``csm serve`` on a fresh data directory with
  ``--plain-http --host 127.0.0.1`` (default workers: one more than the CPUs, x 8 threads). An EC P-256 root CA is
  created in its SoftHSM token (``POST /v1/ca``) with the built-in profiles; the load is
  ``POST /v1/ca/bench/sign?profile=tls-server`` with a PEM CSR body (``application/pkcs10``).
  Every certificate is stored in SQLite and every request audited (hash chain + token MAC).
* OpenBao "persistent": integrated storage (raft) in a temp dir plus a file audit device,
  initialised and unsealed here; PKI engine at ``pki/`` with an internal EC P-256 root and a
  role ``bench`` (``no_store=false``: certificates stored, as csm does); load ``POST
  /v1/pki/sign/bench``. OpenBao "dev": in-memory storage, no audit, same PKI setup.
* The CSRs: 64 distinct EC P-256 requests (host<i>.example.com, DNS SAN), made beforehand.
* Load: ``wrk -t1 -c<connections> --latency``, a 2 s warm-up before each run; with several
  rounds the systems are measured in turn and medians are reported. Server CPU per request
  comes from the server's process tree (robust to other load on the machine).
* Raw token sign rate: ``KeyStore.sign`` (ECDSA P-256 over a SHA-256 digest) on a private
  SoftHSM token in this process, with 1 thread and with ``--connections`` threads.

Prints requests/s, p50/p99 latency and server ms/request for each system and the ratios.

``--in-process N`` measures instead the CPU of N signings with the app called as a WSGI callable
in this process (same data directory, CA and request as the load runs; no granian, no wrk, no
OpenBao), single thread and with ``--connections`` threads; ``--profile`` adds a cProfile. The
load's requests are answered by the fast route of :mod:`sms.ca.fast` (the Flask view answers
anything else).
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ would come first on sys.path and its secrets.py would shadow the stdlib.
_ROOT = str(Path(__file__).resolve().parents[1])
_HERE = Path(__file__).resolve().parent
sys.path[:] = [_ROOT] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import requests  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

# Process handling, wrk runs and parsing, CPU accounting, OpenBao servers: shared with the others.
import bench._harness as H  # noqa: E402

N_CSRS = 64

LUA = """
local bodies = {%(bodies)s}
local n = #bodies
local i = 0
wrk.method = "POST"
wrk.headers["%(token_header)s"] = "%(token)s"
wrk.headers["Content-Type"] = "%(ctype)s"
request = function()
  i = i + 1
  return wrk.format("POST", "%(path)s", nil, bodies[(i %% n) + 1])
end
"""


def make_csrs() -> list[str]:
    out = []
    for i in range(N_CSRS):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"host{i}.example.com")]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"host{i}.example.com")]), False)
               .sign(key, hashes.SHA256()))
        out.append(csr.public_bytes(serialization.Encoding.PEM).decode())
    return out


@dataclass
class Target:
    name: str
    base: str
    path: str
    ctype: str
    token_header: str
    token: str
    bodies: list[str]
    session: int
    check: Any  # callable(base, token) -> int: certificates stored, for the closing line
    results: list[Any] = field(default_factory=list)

    def script(self, workdir: Path) -> Path:
        p = workdir / f"wrk-{self.name.split()[0]}-{abs(hash(self.name)) % 10000}.lua"
        p.write_text(LUA % {"bodies": ", ".join(json.dumps(b) for b in self.bodies), "token_header": self.token_header,
                            "token": self.token, "ctype": self.ctype, "path": self.path})
        return p

    def run(self, duration: int, conns: int, workdir: Path) -> Any:
        script = self.script(workdir)
        H.run_wrk(self.base, script, 2, conns)  # warm-up
        r = H.run_wrk(self.base, script, duration, conns, self.session)
        self.results.append(r)
        return r

    def median(self) -> Any:
        return H.Result.median(self.results)


# ---- csm ------------------------------------------------------------------------------------------
def start_csm(workdir: Path, csrs: list[str], extra: list[str]) -> tuple[Target, subprocess.Popen[bytes]]:
    data = workdir / "csm-data"
    port = H.free_port()
    log = open(workdir / "csm.log", "wb")  # noqa: SIM115
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    proc = subprocess.Popen([H.PY, "-m", "sms.cli", "serve", "--data-dir", str(data), "--plain-http", "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "WARNING", *extra],
                            cwd=H.ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    H.wait_http(base + "/v1/sys/ready", (200,), 90, proc)
    token = (data / "root-token").read_text().strip()
    h = {"X-CSM-Token": token}
    requests.post(base + "/v1/ca", json={"name": "bench", "subject": "CN=Bench Root,O=csm", "key_type": "ec-p256"},
                  headers=h, timeout=60).raise_for_status()
    r = requests.post(base + "/v1/ca/bench/sign?profile=tls-server", data=csrs[0], timeout=30,
                      headers={**h, "Content-Type": "application/pkcs10"})
    r.raise_for_status()

    def stored(base: str, token: str) -> int:
        rep = requests.get(base + "/v1/ca/report?ca=bench", headers={"X-CSM-Token": token}, timeout=30).json()
        return sum(int(x["issued"]) for x in rep["issuance"])

    return Target("csm (SQLite, SoftHSM, audited)", base, "/v1/ca/bench/sign?profile=tls-server",
                  "application/pkcs10", "X-CSM-Token", token, csrs, proc.pid, stored), proc


# ---- OpenBao ----------------------------------------------------------------------------------------
def _bao_pki(base: str, token: str, csrs: list[str]) -> None:
    s = requests.Session()
    s.headers["X-Vault-Token"] = token
    s.post(base + "/v1/sys/mounts/pki", json={"type": "pki", "config": {"max_lease_ttl": "87600h"}},
           timeout=30).raise_for_status()
    s.post(base + "/v1/pki/root/generate/internal", json={"common_name": "Bench Root", "key_type": "ec",
                                                          "key_bits": 256, "ttl": "87600h"}, timeout=60).raise_for_status()
    s.post(base + "/v1/pki/roles/bench", json={"allow_any_name": True, "key_type": "ec", "key_bits": 256,
                                               "ttl": "2160h", "max_ttl": "9528h", "no_store": False,
                                               "server_flag": True, "client_flag": False}, timeout=30).raise_for_status()
    s.post(base + "/v1/pki/sign/bench", json={"csr": csrs[0]}, timeout=30).raise_for_status()


def _bao_stored(base: str, token: str) -> int:
    r = requests.request("LIST", base + "/v1/pki/certs", headers={"X-Vault-Token": token}, timeout=60)
    return len(r.json()["data"]["keys"]) if r.status_code == 200 else -1


def _bao_bodies(csrs: list[str]) -> list[str]:
    return [json.dumps({"csr": c}) for c in csrs]


def start_bao_persistent(workdir: Path, csrs: list[str]) -> tuple[Target, subprocess.Popen[bytes]]:
    proc, base, token = H.start_bao_raft(workdir)
    deadline = time.monotonic() + 20
    while True:  # the first mount right after election can race the barrier setup
        try:
            _bao_pki(base, token, csrs)
            break
        except requests.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    return Target("OpenBao raft + file audit", base, "/v1/pki/sign/bench", "application/json", "X-Vault-Token",
                  token, _bao_bodies(csrs), proc.pid, _bao_stored), proc


def start_bao_dev(workdir: Path, csrs: list[str]) -> tuple[Target, subprocess.Popen[bytes]]:
    proc, base = H.start_bao_dev(workdir)
    _bao_pki(base, "root", csrs)
    return Target("OpenBao dev (inmem, no audit)", base, "/v1/pki/sign/bench", "application/json", "X-Vault-Token",
                  "root", _bao_bodies(csrs), proc.pid, _bao_stored), proc


# ---- raw token sign rate ---------------------------------------------------------------------------
def raw_sign_rate(workdir: Path, seconds: float, threads: int) -> dict[int, float]:
    """ECDSA P-256 signatures/s of a private SoftHSM token in this process (1 and N threads)."""
    from hsm.softhsm import DEFAULT_MODULE, init_token, write_softhsm_conf

    conf = write_softhsm_conf(workdir / "raw-token")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = secrets.token_hex(8)
    init_token(conf, "bench-raw", secrets.token_hex(8), pin)
    from hsm import HashAlg, KeyStore, KeyType, SignatureScheme, TokenConfig

    ks = KeyStore(TokenConfig(module_path=DEFAULT_MODULE, token_label="bench-raw", pin=pin))
    ks.open()
    try:
        ks.generate("raw", KeyType.EC_P256)
        data = secrets.token_bytes(32)
        out = {}
        for n in sorted({1, threads}):
            counts = [0] * n
            stop_at = time.monotonic() + seconds

            def work(k: int) -> None:
                while time.monotonic() < stop_at:
                    ks.sign("raw", data, SignatureScheme.ECDSA, HashAlg.SHA256)
                    counts[k] += 1

            ts = [threading.Thread(target=work, args=(k,)) for k in range(n)]
            t0 = time.monotonic()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            out[n] = sum(counts) / (time.monotonic() - t0)
        return out
    finally:
        ks.close()


# ---- in process ------------------------------------------------------------------------------------
def in_process(workdir: Path, csrs: list[str], n: int, threads: int, profile: bool) -> None:
    """CPU per signing with the app called as a WSGI callable in this process (no granian, no
    wrk): the data directory and CA are made by ``csm serve`` as for the load runs, then the
    server is stopped. Prints process CPU per request (min / median of batches of 50), single
    thread and with ``threads`` threads (group commits as under load), and with ``profile`` a
    cProfile of the single-thread run by own time (CPU clock of the thread)."""
    import cProfile
    import io
    import pstats
    import statistics

    target, proc = start_csm(workdir, csrs, [])
    H.stop(proc)
    os.environ.pop("SOFTHSM2_CONF", None)
    from sms.app import create_app
    from sms.config import load_settings

    app = create_app(load_settings({"data_dir": str(workdir / "csm-data"), "log_level": "WARNING"}))
    path, query = target.path.split("?", 1)
    bodies = [c.encode() for c in csrs]

    def call(i: int) -> None:
        body = bodies[i % len(bodies)]
        env = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
               "CONTENT_TYPE": target.ctype, "CONTENT_LENGTH": str(len(body)), "HTTP_X_CSM_TOKEN": target.token}
        status: list[str] = []
        b"".join(app(env, lambda s, h, e=None: status.append(s)))
        if not status[0].startswith("201"):
            raise SystemExit(f"signing failed: {status[0]}")

    for i in range(50):
        call(i)
    batches: list[float] = []
    prof = cProfile.Profile(time.thread_time) if profile else None
    for b in range(max(1, n // 50)):
        t0 = time.process_time()
        if prof:
            prof.enable()
        for i in range(50):
            call(b * 50 + i)
        if prof:
            prof.disable()
        batches.append((time.process_time() - t0) * 1000 / 50)
    print(f"in process, 1 thread:   CPU per signing min {min(batches):.3f} ms, median "
          f"{statistics.median(batches):.3f} ms ({len(batches) * 50} signings)")
    per = max(1, n // threads)
    t0 = time.process_time()
    workers = [threading.Thread(target=lambda k=k: [call(k * per + i) for i in range(per)]) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(f"in process, {threads} threads: CPU per signing {(time.process_time() - t0) * 1000 / (per * threads):.3f} ms")
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
        print(out.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds per measured run (2..120)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="measurements per system, interleaved (1..5)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--csm-arg", action="append", default=[], help="extra argument for csm serve (repeatable)")
    ap.add_argument("--only-csm", action="store_true", help="measure csm alone (no OpenBao, no ratios)")
    ap.add_argument("--in-process", type=int, metavar="N", default=0,
                    help="instead: N signings through the app called in this process, CPU per signing (no OpenBao)")
    ap.add_argument("--profile", action="store_true", help="with --in-process: cProfile of the single-thread run")
    args = ap.parse_args()
    if args.in_process:
        workdir = Path(tempfile.mkdtemp(prefix="csm-bench-ca-"))
        try:
            in_process(workdir, make_csrs(), min(max(args.in_process, 50), 100_000), max(1, args.connections),
                       args.profile)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    duration, rounds = min(max(args.duration, 2), 120), min(max(args.rounds, 1), 5)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="csm-bench-ca-"))
    started = time.monotonic()
    csrs = make_csrs()
    procs: list[subprocess.Popen[bytes]] = []
    targets: list[Target] = []
    print(f"EC P-256 CA, {N_CSRS} EC P-256 CSRs; wrk -t1 -c{args.connections}, {duration} s per run, "
          f"{rounds} round(s)")
    try:
        starters = [lambda: start_csm(workdir, csrs, args.csm_arg)]
        if not args.only_csm:
            starters += [lambda: start_bao_persistent(workdir, csrs), lambda: start_bao_dev(workdir, csrs)]
        for start in starters:
            t, p = start()
            procs.append(p)
            targets.append(t)
        for rnd in range(rounds):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for t in order:
                H.wait_quiet([x.session for x in targets])
                r = t.run(duration, args.connections, workdir)
                print(H.line(t.name, "sign", r, " *" if r.noisy else ""))
        stored = {t.name: t.check(t.base, t.token) for t in targets}
    finally:
        for p in procs:
            H.stop(p)
    if args.only_csm:
        r = targets[0].median()
        print(H.line(targets[0].name, "sign", r) + f"  stored {stored[targets[0].name]}")
        shutil.rmtree(workdir, ignore_errors=True)
        return
    raw = raw_sign_rate(workdir, min(duration, 5), args.connections)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work directory kept: {workdir}")

    print("\nmedians:")
    med = {t.name: t.median() for t in targets}
    for t in targets:
        print(H.line(t.name, "sign", med[t.name]) + f"  stored {stored[t.name]}")
    for n, rate in raw.items():
        print(f"  {'raw token ECDSA P-256 sign':<30} {n:>2} thread(s) {rate:7.0f}/s")
    csm, raft, dev = (med[t.name] for t in targets)
    best_raw = max(raw.values())
    print("\nratios:")
    print(f"  csm / OpenBao raft+audit  {csm.rps / raft.rps:5.2f}x   (target >= 1.0x)")
    print(f"  csm / OpenBao dev         {csm.rps / dev.rps:5.2f}x")
    print(f"  csm / raw token sign      {csm.rps / best_raw:5.2f}   (fraction of the best raw rate)")
    print(f"  server CPU per signing: csm {csm.server_ms_per_req:.2f} ms, OpenBao raft {raft.server_ms_per_req:.2f} ms, "
          f"dev {dev.server_ms_per_req:.2f} ms")
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
