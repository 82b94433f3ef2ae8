"""Values of the key store: closed vocabularies as Enums, records as frozen dataclasses."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class KeyType(enum.Enum):
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    AES_256 = "aes-256"

    @property
    def is_asymmetric(self) -> bool:
        return self is not KeyType.AES_256

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("rsa-")

    @property
    def is_ec(self) -> bool:
        return self.value.startswith("ec-")


class SignatureScheme(enum.Enum):
    """How an asymmetric key signs (the hash is chosen separately)."""

    RSA_PKCS1V15 = "rsa-pkcs1v15"
    RSA_PSS = "rsa-pss"
    ECDSA = "ecdsa"


class HashAlg(enum.Enum):
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"


class _Secret(str):
    """A str whose repr never shows the value."""

    def __repr__(self) -> str:  # pragma: no cover - trivial
        return "'***'"


@dataclass(frozen=True)
class TokenConfig:
    """Where the token is and how to log in. The PIN is hidden from repr()."""

    module_path: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = "csm"
    pin: str = field(default="", repr=False)
    # Extra environment for the module (e.g. SOFTHSM2_CONF); applied before the module is loaded.
    module_env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class KeyInfo:
    label: str
    key_type: KeyType
    key_id: bytes
    extractable: bool = False
    sensitive: bool = True
