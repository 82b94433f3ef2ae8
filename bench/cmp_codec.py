"""Micro-benchmark of the CMP codec: decode/encode, PBM and signature protection, POP.

    .venv/bin/python bench/cmp_codec.py [iterations]

Prints per-operation mean time; no network, no openssl.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client_sdk import cmp
from client_sdk.cmp import builders


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _bench(label: str, fn: Callable[[], object], n: int) -> None:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    print(f"{label:<38} {(time.perf_counter() - t) / n * 1e3:8.3f} ms")


def main(n: int = 200) -> None:
    import datetime as dt

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("bench")).issuer_name(_name("bench"))
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    newkey = ec.generate_private_key(ec.SECP256R1())
    hdr = builders.request_header(sender=_name("bench"), recipient=_name("CA"))
    req = builders.cert_request(newkey, subject=_name("nf"))
    msg = cmp.PKIMessage(hdr, cmp.IrBody((req,)))
    pbm = cmp.protect_with_pbm(msg, b"secret", iteration_count=500)
    sig = cmp.protect_with_signature(msg, key, cert=cert)
    pbm_der, sig_der = pbm.encode(), sig.encode()
    _bench("decode ir (PBM)", lambda: cmp.PKIMessage.decode(pbm_der), n)
    _bench("decode ir (signature, 1 extraCert)", lambda: cmp.PKIMessage.decode(sig_der), n)
    _bench("build+encode ir", lambda: cmp.PKIMessage(hdr, cmp.IrBody((builders.cert_request(
        newkey, subject=_name("nf")),))).encode(), n)
    decoded = cmp.PKIMessage.decode(pbm_der)
    _bench("verify PBM (500 iterations)", lambda: cmp.verify_pbm(decoded, b"secret"), n)
    sdec = cmp.PKIMessage.decode(sig_der)
    _bench("verify signature (ECDSA P-256)", lambda: cmp.verify_signature(sdec, cert), n)
    _bench("verify POP", lambda: cmp.verify_pop(decoded.body.requests[0]), n)  # type: ignore[attr-defined]
    _bench("protect PBM (500 iterations)", lambda: cmp.protect_with_pbm(msg, b"secret", iteration_count=500), n)
    # the server's answer: ip with the certificate, PBM with a reused salt (derived key given)
    params = cmp.PBMParameters(salt=b"s" * 16, iteration_count=500)
    base_key = cmp.pbm_base_key(b"secret", params)

    def ip() -> bytes:
        body = builders.cert_rep_body(cmp.BodyType.IR, [builders.granted(0, cert)])
        rsp = cmp.PKIMessage(builders.response_header(decoded.header, sender=_name("CA"), implicit_confirm=True), body)
        return cmp.protect_with_pbm(rsp, b"secret", iteration_count=500, salt=params.salt,
                                    base_key=base_key).encode()

    _bench("build+protect+encode ip (PBM key cached)", ip, n)
    ip_der = ip()
    _bench("decode ip (client side)", lambda: cmp.PKIMessage.decode(ip_der), n)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
