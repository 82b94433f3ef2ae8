"""Benchmark: CSR signings per second through the CA engine, in process, single thread, next to
the raw ECDSA sign rate of the same SoftHSM token measured in the same run.

    .venv/bin/python bench/ca_engine.py [--seconds 3] [--csrs 200]

An EC P-256 root CA whose key is generated in a fresh, private SoftHSM token (temporary
directory, removed at exit); EC P-256 CSRs made beforehand (their keys are not part of the
measurement). Each phase runs for ``--seconds`` (bounded to 1..60). Rows:

* ``token ECDSA P-256 sign``: ``KeyStore.sign`` over 32 bytes (C_Sign with CKM_ECDSA after a
  SHA-256 in Python) — the floor every issuance pays once.
* ``engine checks only``: CSR parse + signature verification + profile evaluation (no token).
* ``engine issue (CSR -> cert)``: ``CaEngine.issue`` end to end: the above, the certificate
  build, the token signature, the in-memory record and the signature counter.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ would come first on sys.path and its secrets.py would shadow the stdlib.
_ROOT = str(Path(__file__).resolve().parents[1])
sys.path[:] = [_ROOT] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _run(label: str, fn: Callable[[int], object], seconds: float) -> tuple[str, int, float, list[float]]:
    for i in range(5):  # warm-up
        fn(i)
    samples: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    i = 0
    while True:
        t = time.perf_counter()
        if t >= deadline:
            break
        fn(i)
        samples.append(time.perf_counter() - t)
        i += 1
    return label, len(samples), time.perf_counter() - start, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each phase (1..60)")
    ap.add_argument("--csrs", type=int, default=200, help="distinct CSRs to cycle through (10..5000)")
    args = ap.parse_args()
    seconds = min(max(args.seconds, 1.0), 60.0)
    n_csrs = min(max(args.csrs, 10), 5000)

    workdir = Path(tempfile.mkdtemp(prefix="csm-bench-ca-"))
    try:
        from hsm.softhsm import DEFAULT_MODULE, init_token, write_softhsm_conf

        conf = write_softhsm_conf(workdir)
        os.environ["SOFTHSM2_CONF"] = str(conf)  # before the module is loaded
        pin = secrets.token_hex(8)
        init_token(conf, "bench-ca", secrets.token_hex(8), pin)

        from ca import CaEngine, CertificateQuery, CreateRootRequest, IssueRequest, MemoryRepository
        from ca.engine import parse_csr
        from ca.policy import evaluate
        from hsm import HashAlg, KeyStore, KeyType, SignatureScheme, TokenConfig

        ks = KeyStore(TokenConfig(module_path=DEFAULT_MODULE, token_label="bench-ca", pin=pin))
        ks.open()
        repo = MemoryRepository()
        engine = CaEngine(keys=ks, cas=repo, certificates=repo)
        ca = engine.create_root(CreateRootRequest(name="bench", subject="CN=Bench Root", key_type=KeyType.EC_P256))
        engine.install_builtin_profiles("bench", crl_url="http://pki.example.com/crl/bench.crl",
                                        ocsp_url="http://pki.example.com/ocsp/bench")
        profile = engine.get_profile("bench", "tls-server")

        csrs = []
        for i in range(n_csrs):
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"host{i}.example.com")]))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"host{i}.example.com")]), False)
                   .sign(key, hashes.SHA256()))
            csrs.append(csr.public_bytes(serialization.Encoding.PEM))

        data = secrets.token_bytes(32)
        raw = _run("token ECDSA P-256 sign", lambda i: ks.sign(ca.key_label, data, SignatureScheme.ECDSA,
                                                                 HashAlg.SHA256), seconds)

        def checks(i: int) -> object:
            csr = parse_csr(csrs[i % n_csrs])
            return evaluate(profile, ca_certificate=ca.certificate, subject=csr.subject, public_key=csr.public_key(),
                            sans=(), extensions=tuple(csr.extensions), validity=None, not_after=None,
                            now=engine.now())

        pre = _run("engine checks only (no token)", checks, seconds)
        issue = _run("engine issue (CSR -> cert)", lambda i: engine.issue(IssueRequest(
            ca="bench", profile="tls-server", csr=csrs[i % n_csrs], requester="bench")), seconds)

        print(f"\nCA engine benchmark: EC P-256 CA key in SoftHSM, EC P-256 CSRs, 1 thread, {seconds:.0f} s per phase")
        print(f"{'operation':<34} {'count':>7} {'ops/s':>9} {'mean ms':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for label, count, elapsed, samples in (raw, pre, issue):
            ms = sorted(s * 1e3 for s in samples)
            p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
            print(f"{label:<34} {count:>7} {count / elapsed:>9.0f} {statistics.fmean(ms):>9.3f} "
                  f"{statistics.median(ms):>8.3f} {p99:>8.3f}")
        raw_rate = raw[1] / raw[2]
        issue_rate = issue[1] / issue[2]
        print(f"\nissuance runs at {issue_rate / raw_rate:.0%} of the raw token sign rate; "
              f"{len(repo.search(CertificateQuery(ca_name='bench', limit=10_000)))} certificates "
              "recorded")
        ks.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
