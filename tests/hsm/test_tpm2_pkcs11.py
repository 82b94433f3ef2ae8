"""Interop: hsm.keystore.KeyStore over tpm2-pkcs11 (libtpm2_pkcs11.so) on swtpm + tpm2-abrmd.

The token's user PIN is itself provisioned by :func:`hsm.pin.provision_pin` and sealed to the
same TPM, as `csm init` does, and the key store logs in with what the sealed source yields.
tpm2-pkcs11 needs a resource manager (tpm2_ptool leaks transient objects on a raw swtpm), hence
the session-wide ``tpm_abrmd`` fixture (tests/hsm/conftest.py).
"""
from __future__ import annotations

import datetime as dt
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from hsm.pin import TpmSealedPin, generate_pin, provision_pin
from hsm.types import HashAlg, KeyType, SignatureScheme, TokenConfig
from tests import tpmsim

pytestmark = [pytest.mark.tpm, pytest.mark.timeout(120)]

DEFAULT_MODULE = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so"


def _module_path() -> str:
    if Path(DEFAULT_MODULE).exists():
        return DEFAULT_MODULE
    try:
        files = subprocess.run(["dpkg", "-L", "libtpm2-pkcs11-1"], capture_output=True, text=True, timeout=10,
                               check=False).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        files = []
    for f in files:
        if f.endswith("/libtpm2_pkcs11.so") or f.endswith("/libtpm2_pkcs11.so.1"):
            return f
    pytest.fail("libtpm2_pkcs11.so not found: apt-get install libtpm2-pkcs11-1")


def _ptool(args: list[str], env: dict[str, str]) -> str:
    exe = shutil.which("tpm2_ptool")
    if exe is None:
        pytest.fail("tpm2_ptool not found: apt-get install libtpm2-pkcs11-tools")
    r = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, f"tpm2_ptool {args[0]} failed: {r.stderr.strip()[-500:]}"
    return r.stdout


@pytest.fixture(scope="module")
def tpm2_token(tpm_abrmd: tpmsim.Abrmd, tmp_path_factory: pytest.TempPathFactory) -> TokenConfig:
    """A fresh tpm2-pkcs11 store and token; the user PIN sealed to the same TPM."""
    work = tmp_path_factory.mktemp("tpm2-pkcs11")
    store = work / "store"
    store.mkdir(mode=0o700)
    source, _ = provision_pin(work / "hsm", tpm_abrmd.tcti, None)
    assert isinstance(source, TpmSealedPin)
    label = f"csm-{secrets.token_hex(4)}"
    env = dict(tpm_abrmd.env, TPM2_PKCS11_STORE=str(store), TSS2_LOG="all+none")
    out = _ptool(["init"], env)
    match = re.search(r"id:\s*(\d+)", out)
    assert match, out
    # test-only: tpm2_ptool takes PINs on its command line
    _ptool(["addtoken", f"--pid={match.group(1)}", f"--label={label}", f"--sopin={generate_pin()}",
            f"--userpin={source.get_pin()}"], env)
    return TokenConfig(
        module_path=_module_path(), token_label=label, pin=source.get_pin(),
        module_env=(
            ("TPM2_PKCS11_STORE", str(store)),
            ("TPM2_PKCS11_TCTI", tpm_abrmd.tcti),
            ("DBUS_SESSION_BUS_ADDRESS", tpm_abrmd.dbus_address),
            ("TPM2_PKCS11_LOG_LEVEL", "0"),
        ),
    )


@pytest.fixture(scope="module")
def tpm2_keystore(tpm2_token: TokenConfig) -> Iterator[Any]:
    from hsm.keystore import KeyStore

    ks = KeyStore(tpm2_token)
    ks.open()
    try:
        yield ks
    finally:
        ks.close()


def _label(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(4)}"


def test_ec_p256_key_generated_in_the_tpm_signs_verifiably(tpm2_keystore: Any) -> None:
    label = _label("ec")
    info = tpm2_keystore.generate(label, KeyType.EC_P256)
    assert info.key_type is KeyType.EC_P256 and not info.extractable
    data = b"to be signed by tpm2-pkcs11"
    sig = tpm2_keystore.sign(label, data, SignatureScheme.ECDSA, HashAlg.SHA256)
    pub = tpm2_keystore.public_key(label)
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))


def test_rsa_2048_key_generated_in_the_tpm_signs_pkcs1v15_and_pss(tpm2_keystore: Any) -> None:
    label = _label("rsa")
    info = tpm2_keystore.generate(label, KeyType.RSA_2048)
    assert info.key_type is KeyType.RSA_2048 and not info.extractable
    pub = tpm2_keystore.public_key(label)
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048
    data = b"rsa over tpm2-pkcs11"
    pub.verify(tpm2_keystore.sign(label, data, SignatureScheme.RSA_PKCS1V15, HashAlg.SHA256), data,
               padding.PKCS1v15(), hashes.SHA256())
    pub.verify(tpm2_keystore.sign(label, data, SignatureScheme.RSA_PSS, HashAlg.SHA256), data,
               padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO), hashes.SHA256())


def test_certificate_signed_through_a_tpm_key_passes_openssl_verify(tpm2_keystore: Any, tmp_path: Path) -> None:
    label = _label("ca")
    tpm2_keystore.generate(label, KeyType.EC_P256)
    ca_key = tpm2_keystore.private_key(label)
    now = dt.datetime.now(dt.timezone.utc)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csm tpm2-pkcs11 test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf.example")]))
        .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf.verify_directly_issued_by(ca)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    r = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), r.stdout + r.stderr


def test_softhsm_and_tpm2_pkcs11_key_stores_work_side_by_side(tpm2_keystore: Any, keystore: Any) -> None:
    soft, tpm = _label("soft"), _label("tpm")
    keystore.generate(soft, KeyType.EC_P256)
    tpm2_keystore.generate(tpm, KeyType.EC_P256)
    for _ in range(3):
        for ks, label in ((keystore, soft), (tpm2_keystore, tpm)):
            sig = ks.sign(label, b"interleaved", SignatureScheme.ECDSA, HashAlg.SHA256)
            ks.public_key(label).verify(sig, b"interleaved", ec.ECDSA(hashes.SHA256()))
    assert tpm2_keystore.exists(tpm) and not tpm2_keystore.exists(soft)
    assert keystore.exists(soft) and not keystore.exists(tpm)
