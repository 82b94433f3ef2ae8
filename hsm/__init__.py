"""hsm: the key store over PKCS#11 (python-pkcs11) and TPM 2.0 sealing (tpm2-pytss).

Every private-key and master-key operation in csm goes through this package. It knows
nothing of Flask or SQL.
"""
from __future__ import annotations

from .errors import (
    DecryptionFailed,
    DuplicateLabel,
    HsmError,
    InvalidKeyMaterial,
    KeyNotExtractable,
    KeyNotFound,
    MechanismUnsupported,
    PinUnavailable,
    PolicyMismatch,
    SealError,
    TokenNotInitialized,
    TokenUnavailable,
    TpmUnavailable,
    WrongKeyType,
    WrongPin,
)
from .keys import HsmECPrivateKey, HsmRSAPrivateKey
from .keystore import KeyStore, LockMode, TokenStatus
from .types import HashAlg, KeyInfo, KeyType, SignatureScheme, TokenConfig

__all__ = [
    "DecryptionFailed", "DuplicateLabel", "HashAlg", "HsmECPrivateKey", "HsmError", "HsmRSAPrivateKey",
    "InvalidKeyMaterial", "KeyInfo", "KeyNotExtractable", "KeyNotFound", "KeyStore", "KeyType", "LockMode",
    "MechanismUnsupported", "PinUnavailable", "PolicyMismatch", "SealError", "SignatureScheme", "TokenConfig",
    "TokenNotInitialized", "TokenStatus", "TokenUnavailable", "TpmUnavailable", "WrongKeyType", "WrongPin",
]
