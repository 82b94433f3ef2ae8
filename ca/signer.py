"""The signer seam: how the CA engine reaches keys. The engine holds *labels* and asks a
:class:`KeyProvider` (in production :class:`hsm.KeyStore`) for ``cryptography`` private-key
objects whose ``sign()`` runs in the token; key bytes never pass through :mod:`ca` (the one
exception is server-side key generation, see :meth:`ca.engine.CaEngine.issue_with_server_key`).

:func:`counting_key` wraps such a key so each signature is counted (usage reports).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, Union, runtime_checkable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as _padding

from hsm.types import KeyInfo, KeyType

from .errors import CaError

SigningKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]
PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]


@runtime_checkable
class KeyProvider(Protocol):
    """What the engine needs from the key store (``hsm.KeyStore`` satisfies it)."""

    def generate(self, label: str, key_type: KeyType) -> KeyInfo:
        """A new non-extractable key pair in the token (DuplicateLabel if the label exists)."""

    def import_private_key(self, label: str, data: bytes, password: bytes | str | None = None) -> KeyInfo:
        """Import a PEM/DER private key as a non-extractable token object."""

    def private_key(self, label: str) -> SigningKey:
        """A cryptography private-key object that signs inside the token."""

    def public_key(self, label: str) -> PublicKey:
        ...

    def get(self, label: str) -> KeyInfo:
        ...

    def destroy(self, label: str) -> None:
        ...


class _CountingRSA(rsa.RSAPrivateKey):
    def __init__(self, inner: rsa.RSAPrivateKey, on_sign: Callable[[], None]) -> None:
        self._inner = inner
        self._on_sign = on_sign

    @property
    def key_size(self) -> int:
        return self._inner.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._inner.public_key()

    def sign(self, data: Any, padding: _padding.AsymmetricPadding, algorithm: Any) -> bytes:
        sig = self._inner.sign(data, padding, algorithm)
        self._on_sign()
        return sig

    def decrypt(self, ciphertext: bytes, padding: _padding.AsymmetricPadding) -> bytes:
        raise CaError("CA keys only sign")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        return self._inner.private_numbers()

    def private_bytes(self, encoding: serialization.Encoding, format: serialization.PrivateFormat,
                      encryption_algorithm: serialization.KeySerializationEncryption) -> bytes:
        return self._inner.private_bytes(encoding, format, encryption_algorithm)

    def __copy__(self) -> _CountingRSA:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _CountingRSA:
        return self


class _CountingEC(ec.EllipticCurvePrivateKey):
    def __init__(self, inner: ec.EllipticCurvePrivateKey, on_sign: Callable[[], None]) -> None:
        self._inner = inner
        self._on_sign = on_sign

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._inner.curve

    @property
    def key_size(self) -> int:
        return self._inner.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._inner.public_key()

    def sign(self, data: Any, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        sig = self._inner.sign(data, signature_algorithm)
        self._on_sign()
        return sig

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise CaError("CA keys only sign")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        return self._inner.private_numbers()

    def private_bytes(self, encoding: serialization.Encoding, format: serialization.PrivateFormat,
                      encryption_algorithm: serialization.KeySerializationEncryption) -> bytes:
        return self._inner.private_bytes(encoding, format, encryption_algorithm)

    def __copy__(self) -> _CountingEC:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _CountingEC:
        return self


def counting_key(key: SigningKey, on_sign: Callable[[], None]) -> SigningKey:
    """``key`` with ``on_sign()`` called after every successful signature. Export methods are
    delegated (a token key refuses them)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return _CountingRSA(key, on_sign)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return _CountingEC(key, on_sign)
    raise TypeError("CA keys are RSA or EC keys")


def signature_hash(key_type: KeyType) -> hashes.SHA256 | hashes.SHA384:
    """The hash a CA key of this type signs with: SHA-384 for P-384, SHA-256 otherwise
    (RSA signs PKCS#1 v1.5)."""
    return hashes.SHA384() if key_type is KeyType.EC_P384 else hashes.SHA256()


__all__ = ["KeyProvider", "PublicKey", "SigningKey", "counting_key", "signature_hash"]
