"""CRMF proof of possession (RFC 4211 §4.1): signature POP over DER(CertRequest)."""
from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from pyasn1_alt_modules import rfc4211

from . import _asn1
from .algorithms import SignatureAlgorithmId, UnknownAlgorithm
from .enums import HashAlgorithm, PopKind
from .errors import BadAlg, BadPOP
from .messages import CertReqMsg, ProofOfPossession


def sign_pop(request: CertReqMsg, key: PrivateKeyTypes, *, hash_alg: HashAlgorithm | None = None,
             rsa_pss: bool = False) -> CertReqMsg:
    """Return ``request`` with a signature POP made by the new key (template must hold subject + key)."""
    tpl = request.template
    if tpl.public_key is None or tpl.subject is None:
        raise ValueError("signature POP without poposkInput needs subject and publicKey in the template")
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*fmt) != tpl.public_key.public_bytes(*fmt):
        raise ValueError("POP key does not match the template's public key")
    alg = SignatureAlgorithmId.for_key(key, hash_alg=hash_alg, rsa_pss=rsa_pss)
    signature = alg.sign(key, request.cert_request_der)
    return dataclasses.replace(request, popo=ProofOfPossession(PopKind.SIGNATURE, alg, signature))


def verify_pop(request: CertReqMsg, *, accept_ra_verified: bool = False) -> None:
    """Check the POP of one CertReqMsg. Raises BadPOP (or BadAlg for an unknown algorithm).

    ``raVerified`` is refused unless ``accept_ra_verified`` (the request came from a trusted RA).
    keyEncipherment/keyAgreement POPs are not supported and are refused.
    """
    pop = request.popo
    if pop is None:
        raise BadPOP("proof of possession missing")
    if pop.kind is PopKind.RA_VERIFIED:
        if accept_ra_verified:
            return
        raise BadPOP("raVerified POP is only accepted from a trusted RA")
    if pop.kind is not PopKind.SIGNATURE:
        raise BadPOP(f"{pop.kind.value} POP is not supported")
    alg = pop.algorithm
    if isinstance(alg, UnknownAlgorithm) or not isinstance(alg, SignatureAlgorithmId):
        raise BadAlg(f"unsupported POP signature algorithm{' ' + alg.oid if isinstance(alg, UnknownAlgorithm) else ''}")
    assert pop.signature is not None
    tpl = request.template
    if pop.signing_key_input is None:
        if tpl.public_key is None or tpl.subject is None:
            raise BadPOP("signature POP without poposkInput needs subject and publicKey in the template")
        key = tpl.public_key
        data = request.cert_request_der
    else:
        inp = _asn1.decode(pop.signing_key_input, rfc4211.POPOSigningKeyInput(), what="POPOSigningKeyInput")
        key = _asn1.spki_to_key(inp["publicKey"])
        if tpl.public_key is not None and tpl.public_key != key:
            raise BadPOP("poposkInput public key differs from the template")
        data = pop.signing_key_input
    try:
        ok = alg.verify(key, pop.signature, data)
    except BadAlg:
        raise BadPOP("POP algorithm does not fit the public key") from None
    if not ok:
        raise BadPOP("POP signature does not verify")
