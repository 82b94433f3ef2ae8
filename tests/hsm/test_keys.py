"""The cryptography key adapters: the stock X.509 builders sign through the token, and the
results pass the real openssl binary."""
from __future__ import annotations

import copy
import datetime as dt
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from hsm import (
    HsmECPrivateKey,
    HsmRSAPrivateKey,
    KeyNotExtractable,
    KeyStore,
    KeyType,
    MechanismUnsupported,
)

OPENSSL = shutil.which("openssl")
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)

# (key type, rsa_padding factory or None, hash)
CASES = {
    "ec-p256": (KeyType.EC_P256, None, hashes.SHA256()),
    "ec-p384": (KeyType.EC_P384, None, hashes.SHA384()),
    "rsa-pkcs1v15": (KeyType.RSA_2048, lambda h: padding.PKCS1v15(), hashes.SHA256()),
    "rsa-pss": (KeyType.RSA_2048, lambda h: padding.PSS(padding.MGF1(h), padding.PSS.DIGEST_LENGTH), hashes.SHA256()),
    "rsa-pss-max-sha512": (KeyType.RSA_3072,
                           lambda h: padding.PSS(padding.MGF1(h), padding.PSS.MAX_LENGTH), hashes.SHA512()),
}


@pytest.fixture(scope="module")
def hsm_keys(keystore: KeyStore) -> dict[KeyType, Any]:
    out = {}
    for key_type in {c[0] for c in CASES.values()}:
        label = f"test-keys-{key_type.value}"
        if not keystore.exists(label):
            keystore.generate(label, key_type)
        out[key_type] = keystore.private_key(label)
    return out


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _run_openssl(*args: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL, "openssl binary is required"
    return subprocess.run([OPENSSL, *args], capture_output=True, text=True, check=False, timeout=30)


def _sign_kwargs(case: str) -> dict[str, Any]:
    _, pad, h = CASES[case]
    kwargs: dict[str, Any] = {"algorithm": h}
    if pad is not None:
        kwargs["rsa_padding"] = pad(h)
    return kwargs


def _ca_and_leaf(key: Any, case: str) -> tuple[x509.Certificate, x509.Certificate]:
    ca = (x509.CertificateBuilder().subject_name(_name("HSM Test CA")).issuer_name(_name("HSM Test CA"))
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(NOW - dt.timedelta(minutes=1)).not_valid_after(NOW + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
          .sign(key, **_sign_kwargs(case)))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("leaf.example")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(minutes=1)).not_valid_after(NOW + dt.timedelta(hours=1))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, **_sign_kwargs(case)))
    return ca, leaf


def _write(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_certificate_signed_through_the_token_passes_openssl_verify(
        hsm_keys: dict[KeyType, Any], tmp_path: Path, case: str) -> None:
    key = hsm_keys[CASES[case][0]]
    ca, leaf = _ca_and_leaf(key, case)
    ca_pem, leaf_pem = _write(tmp_path / "ca.pem", ca), _write(tmp_path / "leaf.pem", leaf)
    proc = _run_openssl("verify", "-CAfile", str(ca_pem), str(leaf_pem))
    assert proc.returncode == 0 and f"{leaf_pem}: OK" in proc.stdout, proc.stderr
    leaf.verify_directly_issued_by(ca)
    if "pss" in case:
        assert isinstance(leaf.signature_algorithm_parameters, padding.PSS)


@pytest.mark.parametrize("case", list(CASES))
def test_crl_signed_through_the_token_passes_openssl_crl_verify(
        hsm_keys: dict[KeyType, Any], tmp_path: Path, case: str) -> None:
    key = hsm_keys[CASES[case][0]]
    ca, leaf = _ca_and_leaf(key, case)
    revoked = (x509.RevokedCertificateBuilder().serial_number(leaf.serial_number)
               .revocation_date(NOW - dt.timedelta(seconds=5)).build())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(NOW - dt.timedelta(minutes=1))
           .next_update(NOW + dt.timedelta(hours=1)).add_revoked_certificate(revoked)
           .add_extension(x509.CRLNumber(1), critical=False)
           .sign(key, **_sign_kwargs(case)))
    assert crl.is_signature_valid(key.public_key())
    crl_pem = tmp_path / "crl.pem"
    crl_pem.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    ca_pem, leaf_pem = _write(tmp_path / "ca.pem", ca), _write(tmp_path / "leaf.pem", leaf)
    proc = _run_openssl("crl", "-in", str(crl_pem), "-CAfile", str(ca_pem), "-noout", "-verify")
    assert proc.returncode == 0 and "verify OK" in (proc.stdout + proc.stderr), proc.stderr
    proc = _run_openssl("verify", "-crl_check", "-CAfile", str(ca_pem), "-CRLfile", str(crl_pem), str(leaf_pem))
    assert proc.returncode != 0 and "certificate revoked" in (proc.stdout + proc.stderr)


@pytest.mark.parametrize("case", ["ec-p256", "rsa-pss"])
def test_csr_signed_through_the_token_is_valid(hsm_keys: dict[KeyType, Any], tmp_path: Path, case: str) -> None:
    key = hsm_keys[CASES[case][0]]
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name("csr.example")).sign(key, **_sign_kwargs(case))
    assert csr.is_signature_valid
    path = tmp_path / "req.pem"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    proc = _run_openssl("req", "-in", str(path), "-noout", "-verify")
    assert proc.returncode == 0 and "verify OK" in (proc.stdout + proc.stderr), proc.stderr


@pytest.mark.parametrize("case", ["ec-p384", "rsa-pkcs1v15"])
def test_ocsp_response_signed_through_the_token_verifies(hsm_keys: dict[KeyType, Any], case: str) -> None:
    key = hsm_keys[CASES[case][0]]
    ca, leaf = _ca_and_leaf(key, case)
    h = CASES[case][2]
    response = (ocsp.OCSPResponseBuilder()
                .add_response(cert=leaf, issuer=ca, algorithm=hashes.SHA256(), cert_status=ocsp.OCSPCertStatus.GOOD,
                              this_update=NOW, next_update=NOW + dt.timedelta(hours=1),
                              revocation_time=None, revocation_reason=None)
                .responder_id(ocsp.OCSPResponderEncoding.HASH, ca)
                .sign(key, h))
    pub: Any = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        pub.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), h)
    else:
        pub.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(h))


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.RSA_2048])
def test_adapters_sign_with_hash_and_prehashed(hsm_keys: dict[KeyType, Any], key_type: KeyType) -> None:
    key = hsm_keys[key_type]
    for h in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        digest = hashes.Hash(h)
        digest.update(b"message")
        prehashed = digest.finalize()
        pub = key.public_key()
        if key_type.is_ec:
            for sig in (key.sign(b"message", ec.ECDSA(h)), key.sign(prehashed, ec.ECDSA(Prehashed(h)))):
                pub.verify(sig, b"message", ec.ECDSA(h))
        else:
            for pad in (padding.PKCS1v15(), padding.PSS(padding.MGF1(h), padding.PSS.DIGEST_LENGTH),
                        padding.PSS(padding.MGF1(h), 17)):
                for sig in (key.sign(b"message", pad, h), key.sign(prehashed, pad, Prehashed(h))):
                    pub.verify(sig, b"message", pad, h)


def test_adapters_refuse_to_export_and_copy_to_themselves(hsm_keys: dict[KeyType, Any]) -> None:
    for key in hsm_keys.values():
        assert isinstance(key, (HsmRSAPrivateKey, HsmECPrivateKey))
        assert isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
        with pytest.raises(KeyNotExtractable, match="cannot be exported"):
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
        with pytest.raises(KeyNotExtractable):
            key.private_numbers()
        assert copy.copy(key) is key and copy.deepcopy(key) is key
        assert key.label in repr(key)


def test_adapters_refuse_what_the_token_does_not_offer(hsm_keys: dict[KeyType, Any]) -> None:
    ec_key, rsa_key = hsm_keys[KeyType.EC_P256], hsm_keys[KeyType.RSA_2048]
    with pytest.raises(MechanismUnsupported):
        ec_key.sign(b"m", ec.ECDSA(hashes.SHA1()))
    with pytest.raises(MechanismUnsupported):
        ec_key.exchange(ec.ECDH(), ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(MechanismUnsupported):
        rsa_key.sign(b"m", padding.PSS(padding.MGF1(hashes.SHA384()), 32), hashes.SHA256())
    with pytest.raises(MechanismUnsupported):
        rsa_key.decrypt(b"\0" * 256, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    with pytest.raises(ValueError):
        rsa_key.sign(b"m", padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO), hashes.SHA256())
