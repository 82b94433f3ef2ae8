"""``cryptography`` private-key objects whose private half stays in the PKCS#11 token.

:class:`HsmRSAPrivateKey` and :class:`HsmECPrivateKey` subclass pyca's key ABCs, so the stock
``CertificateBuilder``, ``CertificateSigningRequestBuilder``,
``CertificateRevocationListBuilder`` and ``OCSPResponseBuilder`` sign through the token: their
Rust signer calls back into :meth:`sign` and derives the AlgorithmIdentifier from the key type,
the hash and (for RSA) the padding. Obtain them from :meth:`hsm.keystore.KeyStore.private_key`.

``sign()`` accepts SHA-256/384/512 either as a ``hashes.HashAlgorithm`` or wrapped in
``Prehashed``. Anything that would reveal the private key (``private_bytes``,
``private_numbers``) raises :class:`~hsm.errors.KeyNotExtractable`; copies are the object itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as _padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from .errors import KeyNotExtractable, MechanismUnsupported
from .types import HashAlg, SignatureScheme

if TYPE_CHECKING:
    from .keystore import KeyStore

_HASHES: dict[str, HashAlg] = {"sha256": HashAlg.SHA256, "sha384": HashAlg.SHA384, "sha512": HashAlg.SHA512}


def _hash_of(algorithm: object) -> tuple[HashAlg, bool]:
    """(HashAlg, prehashed) for a ``hashes.HashAlgorithm`` or ``Prehashed``."""
    prehashed = isinstance(algorithm, Prehashed)
    inner: Any = algorithm._algorithm if prehashed else algorithm  # type: ignore[attr-defined]
    if not isinstance(inner, hashes.HashAlgorithm):
        raise MechanismUnsupported("algorithm must be a SHA-2 HashAlgorithm or Prehashed")
    alg = _HASHES.get(inner.name)
    if alg is None:
        raise MechanismUnsupported(f"hash {inner.name} is not supported (SHA-256, SHA-384, SHA-512)")
    return alg, prehashed


def _refuse(label: str) -> NoReturn:
    raise KeyNotExtractable(f"the private key {label!r} lives in the PKCS#11 token and cannot be exported")


class HsmRSAPrivateKey(rsa.RSAPrivateKey):
    """An RSA key in the token, signing with PKCS#1 v1.5 or PSS (MGF1 with the signing hash)."""

    def __init__(self, keystore: KeyStore, label: str, public_key: rsa.RSAPublicKey) -> None:
        self._ks = keystore
        self._label = label
        self._public = public_key

    @property
    def label(self) -> str:
        return self._label

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def sign(self, data: bytes | bytearray | memoryview, padding: _padding.AsymmetricPadding,
             algorithm: object) -> bytes:
        """``algorithm``: a SHA-2 ``HashAlgorithm`` or ``Prehashed`` (cryptography's
        ``NoDigestInfo`` raw mode is not offered)."""
        hash_alg, prehashed = _hash_of(algorithm)
        data = bytes(data)
        salt: int | None = None
        if isinstance(padding, _padding.PKCS1v15):
            scheme = SignatureScheme.RSA_PKCS1V15
        elif isinstance(padding, _padding.PSS):
            scheme = SignatureScheme.RSA_PSS
            mgf = padding.mgf
            if not isinstance(mgf, _padding.MGF1) or getattr(mgf, "_algorithm", None) is None \
                    or _HASHES.get(mgf._algorithm.name) is not hash_alg:
                raise MechanismUnsupported("RSA-PSS needs MGF1 with the signing hash")
            salt = self._salt_length(padding, hash_alg)
        else:
            raise MechanismUnsupported(f"RSA padding {getattr(padding, 'name', padding)!r} is not supported")
        if prehashed:
            return self._ks.sign_digest(self._label, data, scheme, hash_alg, salt_length=salt)
        return self._ks.sign(self._label, data, scheme, hash_alg, salt_length=salt)

    def _salt_length(self, pss: _padding.PSS, hash_alg: HashAlg) -> int:
        from .keystore import DIGEST_SIZE

        value = pss._salt_length
        digest = DIGEST_SIZE[hash_alg]
        if value is _padding.PSS.DIGEST_LENGTH:
            return digest
        if value is _padding.PSS.MAX_LENGTH:
            return (self.key_size + 6) // 8 - digest - 2
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise ValueError("RSA-PSS signing needs DIGEST_LENGTH, MAX_LENGTH or an explicit salt length")

    def decrypt(self, ciphertext: bytes, padding: _padding.AsymmetricPadding) -> bytes:
        raise MechanismUnsupported(f"key {self._label!r} is a signing key; RSA decryption is not offered")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _refuse(self._label)

    def private_bytes(self, encoding: serialization.Encoding, format: serialization.PrivateFormat,
                      encryption_algorithm: serialization.KeySerializationEncryption) -> bytes:
        _refuse(self._label)

    def __copy__(self) -> HsmRSAPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HsmRSAPrivateKey:
        return self

    def __repr__(self) -> str:
        return f"<HsmRSAPrivateKey label={self._label!r} bits={self.key_size}>"


class HsmECPrivateKey(ec.EllipticCurvePrivateKey):
    """An EC (P-256/P-384) key in the token, signing ECDSA (hash in Python, CKM_ECDSA in the token)."""

    def __init__(self, keystore: KeyStore, label: str, public_key: ec.EllipticCurvePublicKey) -> None:
        self._ks = keystore
        self._label = label
        self._public = public_key

    @property
    def label(self) -> str:
        return self._label

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, data: bytes | bytearray | memoryview,
             signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        data = bytes(data)
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise MechanismUnsupported("only ECDSA signatures are supported")
        if getattr(signature_algorithm, "deterministic_signing", False):
            raise MechanismUnsupported("deterministic ECDSA (RFC 6979) is not available in the token")
        hash_alg, prehashed = _hash_of(signature_algorithm.algorithm)
        if prehashed:
            return self._ks.sign_digest(self._label, data, SignatureScheme.ECDSA, hash_alg)
        return self._ks.sign(self._label, data, SignatureScheme.ECDSA, hash_alg)

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise MechanismUnsupported(f"key {self._label!r} is a signing key; ECDH is not offered")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _refuse(self._label)

    def private_bytes(self, encoding: serialization.Encoding, format: serialization.PrivateFormat,
                      encryption_algorithm: serialization.KeySerializationEncryption) -> bytes:
        _refuse(self._label)

    def __copy__(self) -> HsmECPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HsmECPrivateKey:
        return self

    def __repr__(self) -> str:
        return f"<HsmECPrivateKey label={self._label!r} curve={self.curve.name}>"


__all__ = ["HsmECPrivateKey", "HsmRSAPrivateKey"]
