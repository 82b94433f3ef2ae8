"""PKIMessage protection: PasswordBasedMac (RFC 4210 §5.1.3.1) and signatures (§5.1.3.3).

Protection is computed over DER(ProtectedPart{header, body}); for a decoded message that is the
exact bytes received. Protecting returns a new message whose header carries protectionAlg (and
senderKID) before the protection is computed, as the RFC requires.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import os
from collections.abc import Callable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from .algorithms import (
    DEFAULT_PBM_ITERATIONS,
    MAX_PBM_ITERATIONS,
    MIN_PBM_ITERATIONS,
    PBMParameters,
    SignatureAlgorithmId,
    UnknownAlgorithm,
)
from .enums import HashAlgorithm, MacAlgorithm
from .errors import BadAlg, BadMessageCheck, WrongIntegrity
from .messages import PKIMessage

_HASHLIB = {
    HashAlgorithm.SHA1: "sha1",
    HashAlgorithm.SHA224: "sha224",
    HashAlgorithm.SHA256: "sha256",
    HashAlgorithm.SHA384: "sha384",
    HashAlgorithm.SHA512: "sha512",
}


class ProtectionKind(enum.Enum):
    NONE = "none"
    MAC = "mac"
    SIGNATURE = "signature"
    UNSUPPORTED = "unsupported"


def protection_kind(msg: PKIMessage) -> ProtectionKind:
    alg = msg.header.protection_alg
    if alg is None or msg.protection is None:
        return ProtectionKind.NONE
    if isinstance(alg, PBMParameters):
        return ProtectionKind.MAC
    if isinstance(alg, SignatureAlgorithmId):
        return ProtectionKind.SIGNATURE
    return ProtectionKind.UNSUPPORTED


_OWF = {
    HashAlgorithm.SHA1: hashlib.sha1,
    HashAlgorithm.SHA224: hashlib.sha224,
    HashAlgorithm.SHA256: hashlib.sha256,
    HashAlgorithm.SHA384: hashlib.sha384,
    HashAlgorithm.SHA512: hashlib.sha512,
}


def pbm_base_key(secret: bytes, params: PBMParameters) -> bytes:
    """BASEKEY = OWF^iterationCount(secret || salt): the costly, per-(secret, salt) part of PBM."""
    owf = _OWF[params.owf]
    key = owf(secret + params.salt).digest()
    for _ in range(params.iteration_count - 1):
        key = owf(key).digest()
    return key


def pbm_mac(secret: bytes, params: PBMParameters, data: bytes, *, base_key: bytes | None = None) -> bytes:
    """MAC = HMAC-<mac>(BASEKEY, data); ``base_key`` (from :func:`pbm_base_key` for these
    ``params``) skips the derivation."""
    key = base_key if base_key is not None else pbm_base_key(secret, params)
    return hmac.digest(key, data, _HASHLIB[params.mac.hash_algorithm])


def protect_with_pbm(msg: PKIMessage, secret: bytes, *, sender_kid: bytes | None = None,
                     owf: HashAlgorithm = HashAlgorithm.SHA256, mac: MacAlgorithm = MacAlgorithm.HMAC_SHA256,
                     iteration_count: int = DEFAULT_PBM_ITERATIONS, salt: bytes | None = None,
                     base_key: bytes | None = None) -> PKIMessage:
    """Return ``msg`` MAC-protected with a shared secret; a fresh 16-byte salt unless given.

    ``sender_kid`` (the reference value the peer knows the secret by) replaces the header's.
    ``base_key``: :func:`pbm_base_key` of the secret for exactly these parameters (``salt`` must
    then be given), so that a caller reusing a salt derives the key once.
    """
    if not isinstance(secret, bytes):
        raise TypeError("secret must be bytes")
    if base_key is not None and salt is None:
        raise ValueError("base_key needs the salt it was derived with")
    params = PBMParameters(salt=os.urandom(16) if salt is None else salt, owf=owf,
                           iteration_count=iteration_count, mac=mac)
    header = msg.header
    header = dataclasses.replace(header, protection_alg=params,
                             sender_kid=sender_kid if sender_kid is not None else header.sender_kid)
    unprotected = PKIMessage(header=header, body=msg.body, extra_certs=msg.extra_certs)
    return unprotected.with_protection(pbm_mac(secret, params, unprotected.protected_part(), base_key=base_key))


def pbm_parameters(msg: PKIMessage, *, max_iterations: int = MAX_PBM_ITERATIONS,
                   min_iterations: int = MIN_PBM_ITERATIONS) -> PBMParameters:
    """The PBM parameters of a MAC-protected message, checked against the iteration bounds (before
    anything is derived). Raises BadMessageCheck / WrongIntegrity / BadAlg like :func:`verify_pbm`."""
    alg = msg.header.protection_alg
    if alg is None or msg.protection is None:
        raise BadMessageCheck("message is not protected")
    if isinstance(alg, UnknownAlgorithm):
        raise BadAlg(f"{alg.reason} ({alg.oid})")
    if not isinstance(alg, PBMParameters):
        raise WrongIntegrity("message is signature-protected, a MAC was expected")
    if alg.iteration_count > max_iterations:
        raise BadAlg(f"PBM iterationCount {alg.iteration_count} exceeds {max_iterations}")
    if alg.iteration_count < min_iterations:
        raise BadAlg(f"PBM iterationCount {alg.iteration_count} is below {min_iterations}")
    return alg


class PbmKeyCache:
    """BASEKEYs (:func:`pbm_base_key`) per (reference, PBM parameters), so that the iterations are
    paid once per salt, not per message, when a peer reuses its salt. Holds derived keys, never
    the secrets (``secret`` is called only on a miss); bounded (emptied when full). Entries are
    derived from the real secret, so a caller-chosen salt can only cost one derivation. The
    owner drops the cache when a secret changes."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._keys: dict[tuple[bytes, PBMParameters], bytes] = {}
        self._max = max_entries

    def get(self, reference: bytes, params: PBMParameters, secret: Callable[[], bytes]) -> bytes:
        k = (reference, params)
        key = self._keys.get(k)
        if key is None:
            key = pbm_base_key(secret(), params)
            if len(self._keys) >= self._max:
                self._keys.clear()
            self._keys[k] = key
        return key

    def __len__(self) -> int:
        return len(self._keys)


def verify_pbm(msg: PKIMessage, secret: bytes, *, max_iterations: int = MAX_PBM_ITERATIONS,
               min_iterations: int = MIN_PBM_ITERATIONS, base_key: bytes | None = None) -> None:
    """Check a PBM-protected message. Raises BadMessageCheck / WrongIntegrity / BadAlg.

    ``base_key``: :func:`pbm_base_key` of the secret for exactly this message's parameters (see
    :func:`pbm_parameters`), for a caller that caches derivations per salt; ``secret`` is then unused.
    """
    alg = pbm_parameters(msg, max_iterations=max_iterations, min_iterations=min_iterations)
    expected = pbm_mac(secret, alg, msg.protected_part(), base_key=base_key)
    if not hmac.compare_digest(expected, msg.protection or b""):
        raise BadMessageCheck("MAC-based protection does not verify")


def subject_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def protect_with_signature(msg: PKIMessage, key: PrivateKeyTypes, *, cert: x509.Certificate,
                           chain: tuple[x509.Certificate, ...] = (), hash_alg: HashAlgorithm | None = None,
                           rsa_pss: bool = False) -> PKIMessage:
    """Return ``msg`` signed with ``key`` (only ``key.sign`` is called: HSM keys work).

    The protection certificate goes first in extraCerts, followed by ``chain`` (RFC 9483 §3.3);
    senderKID becomes the certificate's SubjectKeyIdentifier when it has one and sender its subject
    (RFC 9483 §3.1: the sender of a signed message is the protection certificate's subject).
    """
    alg = SignatureAlgorithmId.for_key(key, hash_alg=hash_alg, rsa_pss=rsa_pss)
    pub = key.public_key()
    if pub != cert.public_key():
        raise ValueError("key does not match the protection certificate")
    header = dataclasses.replace(msg.header, protection_alg=alg, sender_kid=subject_key_id(cert),
                                 sender=x509.DirectoryName(cert.subject))
    extra = (cert, *[c for c in chain if c != cert])
    unprotected = PKIMessage(header=header, body=msg.body, extra_certs=extra)
    return unprotected.with_protection(alg.sign(key, unprotected.protected_part()))


def verify_signature(msg: PKIMessage, cert: x509.Certificate) -> None:
    """Check a signature-protected message against ``cert``'s public key (no path validation)."""
    alg = msg.header.protection_alg
    if alg is None or msg.protection is None:
        raise BadMessageCheck("message is not protected")
    if isinstance(alg, UnknownAlgorithm):
        raise BadAlg(f"{alg.reason} ({alg.oid})")
    if not isinstance(alg, SignatureAlgorithmId):
        raise WrongIntegrity("message is MAC-protected, a signature was expected")
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise BadAlg("the signer certificate's public key is unusable") from None
    if not alg.verify(key, msg.protection, msg.protected_part()):
        raise BadMessageCheck("signature-based protection does not verify")


def protection_certificate(msg: PKIMessage) -> x509.Certificate | None:
    """The signer's certificate as the sender supplied it: the first extraCerts entry (RFC 9483 §3.3)
    unless senderKID names another extraCerts entry by its SubjectKeyIdentifier."""
    kid = msg.header.sender_kid
    if kid is not None:
        for c in msg.extra_certs:
            if subject_key_id(c) == kid:
                return c
    return msg.extra_certs[0] if msg.extra_certs else None

