"""The key store's error hierarchy: one root, leaves named after the condition.

Messages never contain PINs, key material or plaintext.
"""
from __future__ import annotations


class HsmError(Exception):
    """Root of every error raised by :mod:`hsm`."""


class TokenUnavailable(HsmError):
    """The PKCS#11 module, slot or token cannot be reached right now (retry later)."""


class WrongPin(HsmError):
    """The token refused the PIN."""


class TokenNotInitialized(HsmError):
    """No token with the configured label exists in the module."""


class KeyNotFound(HsmError):
    """No key with this label exists in the token."""

    def __init__(self, label: str) -> None:
        super().__init__(f"no key labelled {label!r} in the token")
        self.label = label


class DuplicateLabel(HsmError):
    """A key with this label already exists (the key store keeps labels unique)."""

    def __init__(self, label: str) -> None:
        super().__init__(f"a key labelled {label!r} already exists in the token")
        self.label = label


class MechanismUnsupported(HsmError):
    """The token does not implement the requested mechanism or key type."""


class InvalidKeyMaterial(HsmError):
    """An imported key could not be parsed, was of an unsupported type, or the password was wrong."""


class DecryptionFailed(HsmError):
    """Authenticated decryption failed: wrong key, tampered ciphertext or associated data mismatch."""


class WrongKeyType(HsmError):
    """The key exists but cannot perform this operation (e.g. signing with an AES key)."""


class KeyNotExtractable(WrongKeyType):
    """The key's material cannot leave the token (not even wrapped), or a private-key export was asked for."""


class SealError(HsmError):
    """TPM sealing or unsealing failed (including a PCR policy mismatch)."""


class TpmUnavailable(SealError):
    """The TPM (or its resource manager) cannot be reached."""


class PolicyMismatch(SealError):
    """The TPM refused to unseal: the PCR values differ from those the secret was sealed to."""


class PinUnavailable(SealError):
    """A PIN source cannot provide a PIN (missing or empty variable/file, unsafe file mode, ...).

    ``source`` is the source's ``describe()`` text (never the PIN).
    """

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source
