"""CMP IR throughput: csm vs the openssl mock CMP server, same run, same load generator.

    .venv/bin/python bench/cmp.py [--duration 6] [--concurrency 8] [--rounds 3]

* csm is started the way the README does: ``csm serve`` on a fresh data directory with
  ``--plain-http --host 127.0.0.1`` (default workers: one more than the CPUs, x 8 threads); a root CA (EC P-256, key in
  the SoftHSM token) is created over REST, and a CMP profile with a PBM shared secret
  (certificate profile ``tls-client``, responses MAC-protected with 500 iterations like the mock's
  default). Every certificate is signed in the token, stored in SQLite, audited.
* openssl mock server: ``openssl cmp -port P -srv_ref … -srv_secret … -srv_cert … -srv_key …
  -rsp_cert … -rsp_capubs … -grant_implicitconf`` (openssl 3.0, in-memory, returns the same
  pre-issued certificate to everyone).
* Load: ``concurrency`` client processes, each looping ``CmpClient.ir`` (client_sdk.cmp, the same
  codec csm uses) with PBM (SHA-256 OWF, HMAC-SHA256, 500 iterations), EC P-256: one
  pre-generated key for all requests (the mock only answers with the certificate of that key).
  The client reuses its PBM salt for 60 s (csm's SDK default; ``--fresh-salt``: a new salt per
  message, as openssl's client does, so csm derives a PBM key per request).
  Mode ``implicit``: ir with implicitConfirm (1 round trip); mode ``certConf``: ir + certConf
  (2 round trips). A 2 s warm-up precedes each mode; then rounds alternate between the servers
  (who goes first alternates too), each run after waiting (at most 3 s) for the machine to calm.

``--in-process``: no servers, no HTTP - csm's WSGI app driven in this process by the same client,
only the server call timed: csm's CPU per transaction (implicitConfirm and certConf), repeatable
on a busy machine where throughput is not (``--transactions`` per round, ``--rounds``).

Prints transactions/s (median and every run), p50/p99 latency, server CPU and load-generator CPU
per transaction, the CPU used by everything else on the machine, and the ratios csm / openssl.
The client is the same for both servers, so its CPU per transaction is (nearly) the same. When
client and server share a machine that the load saturates (2 cores: both servers, implicitConfirm),
throughput is about cores / (client CPU + server CPU per transaction), so the ratio csm / openssl is
(client + mock CPU) / (client + csm CPU): it reaches 1.0 only when csm spends no more CPU per
transaction than the mock (give or take the client's run-to-run variation). The openssl mock serves one connection at a time; where the
machine is not saturated (certConf on 2 cores: ~1.5 cores busy), that bounds its rate. Bounded: ~2-3 minutes.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._harness import free_port, machine_busy, stop, tree_cpu, wait_quiet  # noqa: E402

PY = sys.executable
SECRET = "bench-cmp-shared-secret-0123456789"
REF = "bench-ref"
ITERATIONS = 500


@dataclass
class Target:
    name: str
    url: str
    recipient_pem: bytes  # the CA certificate (for the recipient name)
    session: int


# ---- servers -----------------------------------------------------------------------------------------

def start_csm(workdir: Path, stack: ExitStack) -> Target:
    data = workdir / "csm-data"
    port = free_port()
    log = open(workdir / "csm.log", "wb")  # noqa: SIM115
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    proc = subprocess.Popen([PY, "-m", "sms.cli", "serve", "--data-dir", str(data), "--plain-http", "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stack.callback(log.close)
    stack.callback(stop, proc)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"csm serve exited {proc.returncode}; see {workdir / 'csm.log'}")
        try:
            if requests.get(base + "/v1/sys/ready", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("csm not ready in 90 s")
        time.sleep(0.2)
    s = requests.Session()
    s.headers["X-CSM-Token"] = (data / "root-token").read_text().strip()
    s.post(base + "/v1/ca", json={"name": "bench", "type": "root", "subject": "CN=csm Bench CA,O=csm"}
           ).raise_for_status()
    s.post(base + "/v1/cmp/profiles", json={"name": "bench", "ca": "bench", "cert_profile": "tls-client",
                                            "secrets": {REF: SECRET}, "response_pbm_iterations": ITERATIONS}
           ).raise_for_status()
    ca = s.get(base + "/v1/ca/bench/ca.pem").content
    return Target("csm serve", base + "/.well-known/cmp/p/bench", ca, proc.pid)


def _pem(obj: object, key: bool = False) -> bytes:
    from cryptography.hazmat.primitives import serialization as ser

    if key:
        return obj.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())  # type: ignore[attr-defined]
    return obj.public_bytes(ser.Encoding.PEM)  # type: ignore[attr-defined]


def start_mock(workdir: Path, client_key_pem: bytes, stack: ExitStack) -> Target:
    """openssl's mock CMP server with a CA made here and the one certificate it hands out."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Mock Bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    client_key = serialization.load_pem_private_key(client_key_pem, None)
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                   "bench.example.com")]))
            .issuer_name(ca_name).public_key(client_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=10))
            .sign(ca_key, hashes.SHA256()))
    for fname, data in (("mock-ca.pem", _pem(ca)), ("mock-ca.key", _pem(ca_key, True)), ("mock-leaf.pem", _pem(leaf))):
        (workdir / fname).write_bytes(data)
    port = free_port()
    log = open(workdir / "mock.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["openssl", "cmp", "-config", "", "-port", str(port), "-srv_ref", "mock-srv",
                             "-srv_secret", "pass:" + SECRET, "-srv_cert", "mock-ca.pem", "-srv_key", "mock-ca.key",
                             "-rsp_cert", "mock-leaf.pem", "-rsp_capubs", "mock-ca.pem", "-grant_implicitconf"],
                            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack.callback(log.close)
    stack.callback(stop, proc)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("openssl mock server did not start") from None
            time.sleep(0.1)
    return Target("openssl mock", f"http://127.0.0.1:{port}/pkix/", _pem(ca), proc.pid)


# ---- load generator ------------------------------------------------------------------------------------

def _worker(url: str, ca_pem: bytes, key_pem: bytes, implicit: bool, start: float, end: float,
            out: mp.Queue, salt_lifetime: float = 60.0) -> None:  # type: ignore[type-arg]
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    from client_sdk import cmp

    key = serialization.load_pem_private_key(key_pem, None)
    recipient = x509.load_pem_x509_certificate(ca_pem).subject
    client = cmp.CmpClient(cmp.HttpTransport(url, timeout=30), recipient=recipient, secret=SECRET.encode(),
                           reference=REF.encode(), pbm_iterations=ITERATIONS, implicit_confirm=implicit,
                           pbm_salt_lifetime=salt_lifetime)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"nf-{os.getpid()}.example.com")])
    lat: list[float] = []
    errors: dict[str, int] = {}
    while time.time() < start:
        time.sleep(0.001)
    cpu0 = time.process_time()
    while time.time() < end:
        t0 = time.perf_counter()
        try:
            got = client.ir(key, subject=subject)  # type: ignore[arg-type]
            if got.implicitly_confirmed != implicit:
                errors["confirm-mode"] = errors.get("confirm-mode", 0) + 1
                continue
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            time.sleep(0.01)
            continue
        if time.time() <= end:
            lat.append(time.perf_counter() - t0)
    out.put((lat, errors, time.process_time() - cpu0))


@dataclass
class Result:
    tps: float
    p50: float
    p99: float
    errors: dict[str, int]
    server_ms: float  # server CPU per transaction
    client_ms: float = float("nan")  # load generator CPU per transaction
    other: float = 0.0  # cores used by everything else on the machine during the run


def run_load(t: Target, key_pem: bytes, implicit: bool, duration: float, concurrency: int,
             salt_lifetime: float = 60.0) -> Result:
    import client_sdk.cmp  # noqa: F401 - imported before the fork, so the workers start at once

    ctx = mp.get_context("fork")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    start = time.time() + 1.0
    end = start + duration
    procs = [ctx.Process(target=_worker, args=(t.url, t.recipient_pem, key_pem, implicit, start, end, q,
                                               salt_lifetime))
             for _ in range(concurrency)]
    for p in procs:
        p.start()
    while time.time() < start:
        time.sleep(0.01)
    cpu0, busy0 = tree_cpu(t.session), machine_busy()
    lat: list[float] = []
    errors: dict[str, int] = {}
    client_cpu = 0.0
    for _ in procs:
        got_lat, got_err, got_cpu = q.get(timeout=duration + 120)
        lat += got_lat
        client_cpu += got_cpu
        for k, v in got_err.items():
            errors[k] = errors.get(k, 0) + v
    cpu = tree_cpu(t.session) - cpu0
    other = max(0.0, machine_busy() - busy0 - cpu - client_cpu) / duration
    for p in procs:
        p.join(10)
    lat.sort()
    n = len(lat)
    nan = float("nan")
    return Result(n / duration, lat[n // 2] * 1000 if n else nan, lat[min(n - 1, int(n * 0.99))] * 1000 if n else nan,
                  errors, cpu * 1000 / n if n else nan, client_cpu * 1000 / n if n else nan, other)


# ---- in-process: server CPU per transaction --------------------------------------------------------

def in_process(n: int, warm: int, rounds: int) -> None:
    """csm's CPU per CMP transaction without HTTP, clients or other processes: the app's WSGI
    callable (fast route) driven by the SDK client in this process, a fresh SQLite data
    directory and SoftHSM token, the same CA and CMP profile as the served benchmark. Counted:
    process CPU around each server call (the group commit runs on the calling thread) plus the
    CPU of the process's other threads during the round (the audit journal's folding). Repeatable
    on a busy machine where throughput is not; rounds alternate the modes."""
    import io
    import threading

    here = Path(__file__).resolve().parent  # bench/secrets.py must not shadow the stdlib's secrets
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    with tempfile.TemporaryDirectory(prefix="csm-bench-cmp-inproc-") as tmp:
        from hsm.softhsm import DEFAULT_MODULE, init_token, write_softhsm_conf

        os.environ["SOFTHSM2_CONF"] = str(write_softhsm_conf(Path(tmp)))
        init_token(Path(os.environ["SOFTHSM2_CONF"]), "bench", "so-bench-pin", "bench-pin")

        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        from ca import CreateRootRequest
        from client_sdk import cmp
        from hsm import KeyType
        from hsm.keystore import KeyStore
        from hsm.types import TokenConfig
        from sms import db
        from sms.app import create_app
        from sms.ca.wiring import ca_engine
        from sms.cmp.store import CmpProfile
        from sms.cmp.wiring import cmp_service
        from sms.config import Settings
        from sms.runtime import AUDIT_MAC_KEY, build_services

        ks = KeyStore(TokenConfig(module_path=DEFAULT_MODULE, token_label="bench", pin="bench-pin"))
        ks.open()
        settings = Settings(data_dir=str(Path(tmp) / "data"), plain_http=True)
        engine = db.make_engine(settings.effective_database_url)
        svc = build_services(settings, engine=engine, keystore=ks)
        db.migrate(engine)
        ks.generate(AUDIT_MAC_KEY, KeyType.AES_256)
        root = ca_engine(svc).create_root(CreateRootRequest(name="bench", subject="CN=csm Bench CA,O=csm"))
        ca_engine(svc).install_builtin_profiles("bench")
        cmp_service(svc).create_profile(CmpProfile(name="bench", ca="bench", cert_profile="tls-client",
                                                   response_pbm_iterations=ITERATIONS), {REF: SECRET})
        wsgi = create_app(services=svc).wsgi_app
        cpu = [0.0, 0]

        class Direct:
            def send(self, request: bytes) -> bytes:
                env = {"REQUEST_METHOD": "POST", "PATH_INFO": "/.well-known/cmp/p/bench", "QUERY_STRING": "",
                       "CONTENT_TYPE": "application/pkixcmp", "CONTENT_LENGTH": str(len(request)),
                       "wsgi.input": io.BytesIO(request), "REMOTE_ADDR": "127.0.0.1", "SERVER_NAME": "bench",
                       "SERVER_PORT": "80", "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1",
                       "wsgi.errors": sys.stderr}
                status: list[str] = []
                t0 = time.process_time()
                body = b"".join(wsgi(env, lambda st, _h, _e=None: status.append(st)))
                cpu[0] += time.process_time() - t0
                cpu[1] += 1
                if not status[0].startswith("200"):
                    raise RuntimeError(f"csm answered {status[0]}")
                return body

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nf.example.com")])
        clients = {mode: cmp.CmpClient(Direct(), recipient=root.certificate.subject, secret=SECRET.encode(),
                                       reference=REF.encode(), pbm_iterations=ITERATIONS, implicit_confirm=implicit)
                   for mode, implicit in (("implicitConfirm", True), ("certConf", False))}
        for c in clients.values():
            for _ in range(warm):
                c.ir(key, subject=subject)
        runs: dict[str, list[float]] = {mode: [] for mode in clients}
        main_thread = threading.main_thread()

        def background_cpu() -> float:
            """CPU of the server's own threads (the audit journal's folder...), all but this one."""
            total = 0.0
            for t in threading.enumerate():
                if t is not main_thread and t.ident is not None:
                    try:
                        total += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
                    except (OSError, ProcessLookupError):  # ended meanwhile
                        pass
            return total

        for _ in range(rounds):
            for mode, c in clients.items():
                cpu[0], cpu[1] = 0.0, 0
                bg = background_cpu()
                for _ in range(n):
                    c.ir(key, subject=subject)
                runs[mode].append((cpu[0] + max(0.0, background_cpu() - bg)) * 1000 / n)
        print(f"csm in process: server CPU per CMP transaction (ir, PBM {ITERATIONS} it., EC P-256; SQLite, "
              f"SoftHSM, audited), {rounds} rounds x {n} transactions, median")
        for mode, ms in runs.items():
            print(f"  {mode:15s} {statistics.median(ms):6.2f} ms/tx  ({' '.join(f'{x:.2f}' for x in ms)})")
        close = getattr(svc.audit, "close", None)  # the audit journal (if any) folds while the token is open
        if close is not None:
            close()
        engine.dispose()
        ks.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per measured run")
    ap.add_argument("--concurrency", type=int, default=8, help="client processes")
    ap.add_argument("--rounds", type=int, default=3, help="measured runs per server and mode (median)")
    ap.add_argument("--fresh-salt", action="store_true",
                    help="the client uses a fresh PBM salt per message (as openssl does) instead of reusing "
                         "one for 60 s, so the server derives a PBM key for every request")
    ap.add_argument("--in-process", action="store_true",
                    help="measure csm's server CPU per transaction in this process (no HTTP, no mock): "
                         "repeatable on a busy machine")
    ap.add_argument("--transactions", type=int, default=500, help="--in-process: transactions per round and mode")
    args = ap.parse_args()
    if args.in_process:
        in_process(args.transactions, warm=100, rounds=args.rounds)
        return
    from cryptography.hazmat.primitives.asymmetric import ec

    started = time.monotonic()
    salt = 0.0 if args.fresh_salt else 60.0
    key_pem = _pem(ec.generate_private_key(ec.SECP256R1()), True)
    with tempfile.TemporaryDirectory(prefix="csm-bench-cmp-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        targets = [start_csm(work, stack), start_mock(work, key_pem, stack)]
        sessions = [t.session for t in targets]
        print(f"CMP IR, PBM ({ITERATIONS} it.), EC P-256, {args.concurrency} client processes (the same Python "
              f"client for both servers, PBM salt {'fresh per message' if args.fresh_salt else 'reused 60 s'}), "
              f"{args.duration:g} s x {args.rounds} interleaved rounds (median); "
              f"{os.cpu_count()} cores")
        print("  csm issues, signs in the token, stores and audits every certificate; the openssl mock returns "
              "one pre-issued certificate and stores nothing")
        table: dict[tuple[str, str], list[Result]] = {}
        for mode, implicit in (("implicitConfirm", True), ("certConf", False)):
            for t in targets:  # warm-up
                run_load(t, key_pem, implicit, 2.0, args.concurrency, salt)
            for rnd in range(args.rounds):
                for t in (targets if rnd % 2 == 0 else targets[::-1]):  # alternate who goes first
                    wait_quiet(sessions, limit=3.0)
                    table.setdefault((t.name, mode), []).append(
                        run_load(t, key_pem, implicit, args.duration, args.concurrency, salt))
        summary: dict[tuple[str, str], Result] = {}
        for (name, mode), rs in table.items():
            r = sorted(rs, key=lambda x: x.tps)[len(rs) // 2]
            errs: dict[str, int] = {}
            for x in rs:
                for k, v in x.errors.items():
                    errs[k] = errs.get(k, 0) + v
            summary[(name, mode)] = s = Result(
                statistics.median(x.tps for x in rs), r.p50, r.p99, errs, statistics.median(x.server_ms for x in rs),
                statistics.median(x.client_ms for x in rs), statistics.median(x.other for x in rs))
            runs = " ".join(f"{x.tps:.0f}" for x in rs)
            print(f"  {name:13s} {mode:15s} {s.tps:7.1f} tx/s ({runs})  p50 {s.p50:6.1f} ms  p99 {s.p99:6.1f} ms  "
                  f"CPU/tx server {s.server_ms:5.1f} ms, client {s.client_ms:5.1f} ms  other load {s.other:.2f} "
                  f"cores  errors {errs or 0}")
        for mode in ("implicitConfirm", "certConf"):
            c, o = summary[("csm serve", mode)], summary[("openssl mock", mode)]
            print(f"  ratio csm / openssl mock, {mode}: {c.tps / o.tps:.2f}x throughput "
                  f"(server CPU per tx {c.server_ms / o.server_ms:.1f}x)")
        print(f"  ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
