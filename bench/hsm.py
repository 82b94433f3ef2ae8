"""Benchmark: the hsm key store against raw python-pkcs11 on the same SoftHSMv2 token.

    .venv/bin/python bench/hsm.py [--seconds 3] [--slices 12] [--threads 1,2] [--ops rsa,ecdsa,gcm]

Operations: RSA-2048 sign (CKM_SHA256_RSA_PKCS), ECDSA P-256 sign (SHA-256 in Python, CKM_ECDSA,
DER-encoded), AES-256-GCM encrypt of 256 bytes (fresh random 96-bit nonce, nonce||ct||tag).

* ``hsm``: ``KeyStore.sign`` / ``KeyStore.encrypt`` by label (session pool, handle cache, error
  mapping, fork check all included).
* ``raw``: plain python-pkcs11 calls doing the same work and producing the same output, on the
  same module context (hsm's initialisation with CKF_OS_LOCKING_OK: as shipped python-pkcs11
  crashes SoftHSM with two threads), each thread with its own session and key objects looked up
  once before timing: the best a hand-written caller could do.

Each cell (operation x threads x side) gets ``--seconds`` of measured time, cut into ``--slices``
slices that alternate raw/hsm so that machine noise hits both sides alike. Overhead is the
median over the slice pairs of ``raw ops/s / hsm ops/s - 1``: positive means hsm is slower. A temporary token is created with
hsm.softhsm and removed afterwards.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, this file's directory comes first on sys.path, where its neighbours (and this
# file, named like the package) would shadow the hsm package and stdlib modules: import from the
# repository root instead.
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (HERE, ROOT)]

Op = Callable[[], object]


@dataclass
class Cell:
    name: str
    threads: int
    ops: dict[str, int] = field(default_factory=lambda: {"raw": 0, "hsm": 0})
    secs: dict[str, float] = field(default_factory=lambda: {"raw": 0.0, "hsm": 0.0})
    cpu: dict[str, float] = field(default_factory=lambda: {"raw": 0.0, "hsm": 0.0})
    slice_overheads: list[float] = field(default_factory=list)
    slice_cpu_overheads: list[float] = field(default_factory=list)

    def rate(self, side: str) -> float:
        return self.ops[side] / self.secs[side] if self.secs[side] else 0.0

    def cpu_per_op(self, side: str) -> float:
        return self.cpu[side] / self.ops[side] if self.ops[side] else 0.0

    @property
    def cpu_overhead(self) -> float:
        return statistics.median(self.slice_cpu_overheads)

    @property
    def overhead(self) -> float:
        """Median over the paired slices (each raw slice against the hsm slice next to it), which
        shrugs off bursts of load from other processes better than the ratio of the totals."""
        return statistics.median(self.slice_overheads)

    @property
    def spread(self) -> tuple[float, float]:
        q = statistics.quantiles(self.slice_overheads, n=4) if len(self.slice_overheads) > 1 else [self.overhead] * 3
        return q[0], q[2]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_slice(make_ops: list[Op], duration: float) -> tuple[int, float, float]:
    """Run one op per thread in a loop for ``duration`` seconds; return (ops done, wall seconds,
    CPU seconds of this process -- the token's work included, since SoftHSM runs in-process)."""
    n = len(make_ops)
    counts = [0] * n
    barrier = threading.Barrier(n + 1)
    stop_at = [0.0]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        op = make_ops[i]
        done = 0
        try:
            barrier.wait()
            end = stop_at[0]
            now = time.perf_counter
            while now() < end:
                op()
                done += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
        counts[i] = done

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    cpu0 = _cpu()
    start = time.perf_counter()
    stop_at[0] = start + duration
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    cpu = _cpu() - cpu0
    if errors:
        raise errors[0]
    return sum(counts), elapsed, cpu


def main(argv: list[str] | None = None) -> int:
    import secrets
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell and side (default 3)")
    parser.add_argument("--slices", type=int, default=12, help="interleaved slices per cell (default 12)")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma separated (default 1,2)")
    parser.add_argument("--ops", default="rsa,ecdsa,gcm", help="operations (default rsa,ecdsa,gcm)")
    args = parser.parse_args(argv)
    thread_counts = [int(x) for x in args.threads.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="csm-bench-hsm-"))
    try:
        from hsm.softhsm import DEFAULT_MODULE, init_token, write_softhsm_conf

        conf = write_softhsm_conf(workdir)
        os.environ["SOFTHSM2_CONF"] = str(conf)  # before the module is loaded
        pin = secrets.token_hex(8)
        init_token(conf, "bench", secrets.token_hex(8), pin)
        return _bench(DEFAULT_MODULE, pin, args, thread_counts)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _bench(module: str, pin: str, args: Any, thread_counts: list[int]) -> int:
    import pkcs11
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from pkcs11 import Attribute, GCMParams, Mechanism, ObjectClass

    from hsm import HashAlg, KeyStore, KeyType, SignatureScheme, TokenConfig
    from hsm import _p11

    ks = KeyStore(TokenConfig(module_path=module, token_label="bench", pin=pin))
    ks.open()
    ks.generate("rsa", KeyType.RSA_2048)
    ks.generate("ec", KeyType.EC_P256)
    ks.generate("aes", KeyType.AES_256)
    data = os.urandom(256)
    token = _p11.find_token(_p11.module_lib(module), "bench")

    max_threads = max(thread_counts)
    raw_keys: list[dict[str, Any]] = []
    for _ in range(max_threads):  # one session per raw thread, keys looked up once
        session = token.open(rw=True)  # like the pool's sessions
        keys = {label: session.get_key(label=label, object_class=cls) for label, cls in
                (("rsa", ObjectClass.PRIVATE_KEY), ("ec", ObjectClass.PRIVATE_KEY), ("aes", ObjectClass.SECRET_KEY))}
        raw_keys.append(keys)

    def raw_rsa(k: dict[str, Any]) -> Op:
        key = k["rsa"]
        return lambda: key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)

    def raw_ecdsa(k: dict[str, Any]) -> Op:
        key = k["ec"]

        def op() -> bytes:
            sig = key.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
            half = len(sig) // 2
            return encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big"))
        return op

    def raw_gcm(k: dict[str, Any]) -> Op:
        key = k["aes"]

        def op() -> bytes:
            nonce = os.urandom(12)
            return nonce + key.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, b"", 128))
        return op

    ops: dict[str, tuple[str, Callable[[dict[str, Any]], Op], Op]] = {
        "rsa": ("RSA-2048 sign", raw_rsa,
                lambda: ks.sign("rsa", data, SignatureScheme.RSA_PKCS1V15, HashAlg.SHA256)),
        "ecdsa": ("ECDSA P-256 sign", raw_ecdsa,
                  lambda: ks.sign("ec", data, SignatureScheme.ECDSA, HashAlg.SHA256)),
        "gcm": ("AES-256-GCM enc 256 B", raw_gcm, lambda: ks.encrypt("aes", data)),
    }
    selected = [o.strip() for o in args.ops.split(",") if o.strip()]
    for name in selected:  # warm up both sides (pool sessions, handle caches)
        _, raw_factory, hsm_op = ops[name]
        run_slice([hsm_op] * max_threads, 0.2)
        run_slice([raw_factory(raw_keys[i]) for i in range(max_threads)], 0.2)

    cells: list[Cell] = []
    load_before = _loadavg()
    slice_len = args.seconds / args.slices
    started = time.perf_counter()
    print(f"SoftHSMv2 via {module}; python-pkcs11 {pkcs11.__version__ if hasattr(pkcs11, '__version__') else '0.10.x'};"
          f" {args.seconds:g} s per cell and side in {args.slices} interleaved slices", flush=True)
    for name in selected:
        label, raw_factory, hsm_op = ops[name]
        for n in thread_counts:
            cell = Cell(label, n)
            raw_threads = [raw_factory(raw_keys[i]) for i in range(n)]
            hsm_threads = [hsm_op] * n
            for s in range(args.slices):
                order = ("raw", "hsm") if s % 2 == 0 else ("hsm", "raw")
                rates, cpus = {}, {}
                for side in order:
                    done, secs, cpu = run_slice(raw_threads if side == "raw" else hsm_threads, slice_len)
                    cell.ops[side] += done
                    cell.secs[side] += secs
                    cell.cpu[side] += cpu
                    rates[side] = done / secs
                    cpus[side] = cpu / max(done, 1)
                cell.slice_overheads.append(rates["raw"] / rates["hsm"] - 1.0)
                cell.slice_cpu_overheads.append(cpus["hsm"] / cpus["raw"] - 1.0)
            cells.append(cell)
            print(f"  measured {label} x{n}", file=sys.stderr, flush=True)
    total = time.perf_counter() - started

    print()
    print(f"{'operation':<22}{'thr':>4}{'raw ops/s':>11}{'hsm ops/s':>11}{'overhead':>10}{'IQR of slices':>19}"
          f"{'raw CPU/op':>12}{'hsm CPU/op':>12}{'CPU ovh':>9}")
    print("-" * 110)
    for c in cells:
        lo, hi = c.spread
        print(f"{c.name:<22}{c.threads:>4}{c.rate('raw'):>11.0f}{c.rate('hsm'):>11.0f}"
              f"{c.overhead * 100:>+9.1f}%{f'{lo * 100:+.1f}% .. {hi * 100:+.1f}%':>19}"
              f"{c.cpu_per_op('raw') * 1e6:>10.1f}us{c.cpu_per_op('hsm') * 1e6:>10.1f}us"
              f"{c.cpu_overhead * 100:>+8.1f}%")
    print("-" * 110)
    worst = max(c.overhead for c in cells)
    print("overhead = median over paired slices of (raw ops/s) / (hsm ops/s) - 1, positive: hsm slower;\n"
          "CPU/op = this process's user+sys CPU per operation (SoftHSM runs in-process), CPU ovh likewise paired;\n"
          f"worst throughput cell {worst * 100:+.1f}% (target < +10%); load average {_loadavg()} "
          f"(before: {load_before}); measuring took {total:.1f} s")
    ks.close()
    return 0


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


if __name__ == "__main__":
    raise SystemExit(main())
