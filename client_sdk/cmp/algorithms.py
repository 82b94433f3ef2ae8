"""Typed AlgorithmIdentifiers for CMP protection and POP: PBM parameters and signature algorithms."""
from __future__ import annotations

import dataclasses
from typing import Any, Union

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from pyasn1.type import univ
from pyasn1_alt_modules import rfc4055, rfc4210, rfc5280

from . import _asn1
from .enums import PASSWORD_BASED_MAC_OID, HashAlgorithm, MacAlgorithm, SignatureAlgorithm
from .errors import BadAlg, BadDataFormat

#: RFC 4210 §5.1.3.1 leaves the bound to the recipient; openssl sends 500, ONAP 1000-1999.
DEFAULT_PBM_ITERATIONS = 10_000
MAX_PBM_ITERATIONS = 100_000
MIN_PBM_ITERATIONS = 100
MAX_PBM_SALT = 128


@dataclasses.dataclass(frozen=True)
class PBMParameters:
    """PasswordBasedMac (OID 1.2.840.113533.7.66.13) parameters."""

    salt: bytes
    owf: HashAlgorithm = HashAlgorithm.SHA256
    iteration_count: int = DEFAULT_PBM_ITERATIONS
    mac: MacAlgorithm = MacAlgorithm.HMAC_SHA256

    def __post_init__(self) -> None:
        if not isinstance(self.salt, bytes) or len(self.salt) > MAX_PBM_SALT:
            raise ValueError("salt must be bytes of at most 128 octets")
        if not isinstance(self.iteration_count, int) or self.iteration_count < 1:
            raise ValueError("iteration_count must be a positive int")


@dataclasses.dataclass(frozen=True)
class PssParameters:
    hash: HashAlgorithm = HashAlgorithm.SHA256
    mgf1_hash: HashAlgorithm = HashAlgorithm.SHA256
    salt_length: int = 32


@dataclasses.dataclass(frozen=True)
class SignatureAlgorithmId:
    """A signature AlgorithmIdentifier (RSASSA-PSS carries its parameters)."""

    algorithm: SignatureAlgorithm
    pss: PssParameters | None = None

    @property
    def hash(self) -> HashAlgorithm | None:
        """The message digest, None for EdDSA."""
        a = self.algorithm
        if a is SignatureAlgorithm.RSA_PSS:
            return (self.pss or PssParameters()).hash
        if a in (SignatureAlgorithm.ED25519, SignatureAlgorithm.ED448):
            return None
        return HashAlgorithm[a.name.split("_")[1]]

    @classmethod
    def for_key(cls, key: PrivateKeyTypes | PublicKeyTypes, *, hash_alg: HashAlgorithm | None = None,
                rsa_pss: bool = False) -> SignatureAlgorithmId:
        """The algorithm to sign with ``key`` (RSA PKCS#1 v1.5 or PSS, ECDSA; SHA-256 unless told)."""
        if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
            h = hash_alg or HashAlgorithm.SHA256
            if h not in (HashAlgorithm.SHA256, HashAlgorithm.SHA384, HashAlgorithm.SHA512):
                raise ValueError("RSA signatures use SHA-256, SHA-384 or SHA-512")
            if rsa_pss:
                return cls(SignatureAlgorithm.RSA_PSS, PssParameters(h, h, h.hash().digest_size))
            return cls(SignatureAlgorithm["RSA_" + h.name])
        if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
            if hash_alg is None:
                size = key.curve.key_size
                hash_alg = HashAlgorithm.SHA512 if size > 384 else HashAlgorithm.SHA384 if size > 256 \
                    else HashAlgorithm.SHA256
            if hash_alg not in (HashAlgorithm.SHA256, HashAlgorithm.SHA384, HashAlgorithm.SHA512):
                raise ValueError("ECDSA signatures use SHA-256, SHA-384 or SHA-512")
            return cls(SignatureAlgorithm["ECDSA_" + hash_alg.name])
        if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
            return cls(SignatureAlgorithm.ED25519)
        if isinstance(key, (ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
            return cls(SignatureAlgorithm.ED448)
        raise TypeError(f"unsupported key type {type(key).__name__}")

    def sign(self, key: PrivateKeyTypes, data: bytes) -> bytes:
        """Sign through ``key.sign`` only (HSM keys implement exactly that)."""
        a = self.algorithm
        if a.name.startswith("RSA"):
            if not isinstance(key, rsa.RSAPrivateKey):
                raise TypeError("algorithm needs an RSA key")
            h = self.hash
            assert h is not None
            return key.sign(data, self._rsa_padding(), h.hash())
        if a.name.startswith("ECDSA"):
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise TypeError("algorithm needs an EC key")
            h = self.hash
            assert h is not None
            return key.sign(data, ec.ECDSA(h.hash()))
        if a is SignatureAlgorithm.ED25519 and isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        if a is SignatureAlgorithm.ED448 and isinstance(key, ed448.Ed448PrivateKey):
            return key.sign(data)
        raise TypeError("key does not match the signature algorithm")

    def verify(self, key: PublicKeyTypes, signature: bytes, data: bytes) -> bool:
        """True if ``signature`` over ``data`` verifies with ``key`` under this algorithm."""
        from cryptography.exceptions import InvalidSignature

        a = self.algorithm
        try:
            if a.name.startswith("RSA") and isinstance(key, rsa.RSAPublicKey):
                h = self.hash
                assert h is not None
                key.verify(signature, data, self._rsa_padding(), h.hash())
                return True
            if a.name.startswith("ECDSA") and isinstance(key, ec.EllipticCurvePublicKey):
                h = self.hash
                assert h is not None
                key.verify(signature, data, ec.ECDSA(h.hash()))
                return True
            if a is SignatureAlgorithm.ED25519 and isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, data)
                return True
            if a is SignatureAlgorithm.ED448 and isinstance(key, ed448.Ed448PublicKey):
                key.verify(signature, data)
                return True
        except InvalidSignature:
            return False
        raise BadAlg(f"{a.name} does not fit a {type(key).__name__.lstrip('_')}")

    def _rsa_padding(self) -> padding.AsymmetricPadding:
        if self.algorithm is SignatureAlgorithm.RSA_PSS:
            p = self.pss or PssParameters()
            return padding.PSS(mgf=padding.MGF1(p.mgf1_hash.hash()), salt_length=p.salt_length)
        return padding.PKCS1v15()


@dataclasses.dataclass(frozen=True)
class UnknownAlgorithm:
    """An AlgorithmIdentifier outside our vocabulary (kept so the message still decodes)."""

    oid: str
    parameters: bytes | None = None
    reason: str = "unsupported algorithm"


ProtectionAlgorithm = Union[PBMParameters, SignatureAlgorithmId, UnknownAlgorithm]


def _hash_from_algid(value: Any) -> HashAlgorithm:
    try:
        return HashAlgorithm(_asn1.oid_str(value["algorithm"]))
    except ValueError:
        raise BadAlg(f"unsupported hash {_asn1.oid_str(value['algorithm'])}") from None


def _pss_from_params(value: Any) -> PssParameters:
    params = _asn1.decode(bytes(value), rfc4055.RSASSA_PSS_params(), what="RSASSA-PSS parameters")
    h = _hash_from_algid(params["hashAlgorithm"]) if _asn1.present(params, "hashAlgorithm") else HashAlgorithm.SHA1
    mh = h
    if _asn1.present(params, "maskGenAlgorithm"):
        mga = params["maskGenAlgorithm"]
        if _asn1.oid_str(mga["algorithm"]) != _asn1.oid_str(rfc4055.id_mgf1):
            raise BadAlg("RSASSA-PSS with a mask generation function other than MGF1")
        inner = _asn1.decode(bytes(mga["parameters"]), rfc5280.AlgorithmIdentifier(), what="MGF1 hash")
        mh = _hash_from_algid(inner)
    salt = int(params["saltLength"]) if _asn1.present(params, "saltLength") else 20
    if _asn1.present(params, "trailerField") and int(params["trailerField"]) != 1:
        raise BadAlg("RSASSA-PSS trailerField must be 1")
    if not 0 <= salt <= 1024:
        raise BadAlg("RSASSA-PSS salt length out of range")
    return PssParameters(h, mh, salt)


def algorithm_from_asn1(value: Any, *, lenient: bool = True) -> ProtectionAlgorithm:
    """AlgorithmIdentifier (pyasn1, any tag) → typed algorithm.

    With ``lenient`` an unsupported algorithm becomes :class:`UnknownAlgorithm` (so the message
    decodes and the verifier can answer badAlg); otherwise :class:`BadAlg` is raised.
    """
    oid = _asn1.oid_str(value["algorithm"])
    params = bytes(value["parameters"]) if _asn1.present(value, "parameters") else None
    try:
        if oid == PASSWORD_BASED_MAC_OID:
            if params is None:
                raise BadDataFormat("PasswordBasedMac without parameters")
            p = _asn1.decode(params, rfc4210.PBMParameter(), what="PBMParameter")
            try:
                mac = MacAlgorithm.from_oid(_asn1.oid_str(p["mac"]["algorithm"]))
            except ValueError:
                raise BadAlg(f"unsupported PBM mac {_asn1.oid_str(p['mac']['algorithm'])}") from None
            count = int(p["iterationCount"])
            if count < 1:
                raise BadDataFormat("PBM iterationCount must be positive")
            return PBMParameters(salt=_asn1.octets(p["salt"]), owf=_hash_from_algid(p["owf"]),
                                 iteration_count=count, mac=mac)
        try:
            sig = SignatureAlgorithm(oid)
        except ValueError:
            raise BadAlg(f"unsupported algorithm {oid}") from None
        if sig is SignatureAlgorithm.RSA_PSS:
            if params is None:
                raise BadAlg("RSASSA-PSS without parameters")
            return SignatureAlgorithmId(sig, _pss_from_params(params))
        return SignatureAlgorithmId(sig)
    except (BadAlg, BadDataFormat) as exc:
        if not lenient:
            raise
        return UnknownAlgorithm(oid, params, exc.detail)


def _algid(oid: str, params: Any = None, spec: Any = None) -> Any:
    out = (spec if spec is not None else rfc5280.AlgorithmIdentifier()).clone()
    out["algorithm"] = univ.ObjectIdentifier(oid)
    if params is not None:
        out["parameters"] = params
    return out


def algorithm_to_asn1(alg: ProtectionAlgorithm, spec: Any = None) -> Any:
    """Typed algorithm → AlgorithmIdentifier (of ``spec``'s tagging if given)."""
    if isinstance(alg, PBMParameters):
        p = rfc4210.PBMParameter()
        p["salt"] = alg.salt
        p["owf"] = _algid(alg.owf.value)
        p["iterationCount"] = alg.iteration_count
        p["mac"] = _algid(alg.mac.value)
        return _algid(PASSWORD_BASED_MAC_OID, univ.Any(_asn1.encode(p)), spec)
    if isinstance(alg, SignatureAlgorithmId):
        a = alg.algorithm
        if a is SignatureAlgorithm.RSA_PSS:
            pp = alg.pss or PssParameters()
            params = rfc4055.RSASSA_PSS_params()
            params["hashAlgorithm"] = _asn1.retag(_algid(pp.hash.value), _asn1.slot(params, "hashAlgorithm"))
            mgf = _asn1.slot(params, "maskGenAlgorithm")
            mgf["algorithm"] = rfc4055.id_mgf1
            mgf["parameters"] = univ.Any(_asn1.encode(_algid(pp.mgf1_hash.value)))
            params["maskGenAlgorithm"] = mgf
            params["saltLength"] = pp.salt_length
            return _algid(a.value, univ.Any(_asn1.encode(params)), spec)
        if a.name.startswith("RSA"):
            return _algid(a.value, univ.Any(_asn1.encode(univ.Null(""))), spec)
        return _algid(a.value, None, spec)
    return _algid(alg.oid, univ.Any(alg.parameters) if alg.parameters is not None else None, spec)


def hash_for_cert(cert_sig_hash: hashes.HashAlgorithm | None) -> HashAlgorithm:
    """certConf certHash algorithm: the certificate's signature hash (RFC 4210 §5.3.18), SHA-256 for EdDSA."""
    if cert_sig_hash is None:
        return HashAlgorithm.SHA256
    try:
        return HashAlgorithm.from_hash(cert_sig_hash)
    except ValueError:
        return HashAlgorithm.SHA256
