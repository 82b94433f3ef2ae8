"""Path validation of CMP protection certificates with cryptography's x509.verification.

Web PKI defaults do not fit CMP signer certificates (no SAN, no serverAuth/clientAuth EKU), so the
end-entity policy permits any extension, and the CA policy keeps the checks that matter: a CA must
assert basicConstraints cA=TRUE and, if it has keyUsage, keyCertSign. Signatures, validity, names
and path length are checked by the verifier itself.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509 import verification as xv

from .errors import SignerNotTrusted


def _ca_basic_constraints(policy: xv.Policy, cert: x509.Certificate, ext: x509.BasicConstraints | None) -> None:
    if ext is None or not ext.ca:
        raise ValueError("issuer is not a CA (basicConstraints cA=FALSE or absent)")


def _ca_key_usage(policy: xv.Policy, cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
    if ext is not None and not ext.key_cert_sign:
        raise ValueError("issuer keyUsage lacks keyCertSign")


def _ee_key_usage(policy: xv.Policy, cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
    if ext is not None and not ext.digital_signature:
        raise ValueError("CMP signer keyUsage lacks digitalSignature")


def _policies() -> tuple[xv.ExtensionPolicy, xv.ExtensionPolicy]:
    ca = (xv.ExtensionPolicy.permit_all()
          .require_present(x509.BasicConstraints, xv.Criticality.AGNOSTIC, _ca_basic_constraints)
          .may_be_present(x509.KeyUsage, xv.Criticality.AGNOSTIC, _ca_key_usage))
    ee = xv.ExtensionPolicy.permit_all().may_be_present(x509.KeyUsage, xv.Criticality.AGNOSTIC, _ee_key_usage)
    return ca, ee


def verify_chain(leaf: x509.Certificate, *, trust_anchors: Sequence[x509.Certificate],
                 untrusted: Sequence[x509.Certificate] = (), at: _dt.datetime | None = None,
                 max_depth: int = 8) -> list[x509.Certificate]:
    """Validate ``leaf`` up to one of ``trust_anchors``; returns the chain (leaf first).

    A leaf that is itself a trust anchor is accepted directly (pinned certificate).
    Raises :class:`SignerNotTrusted` on any failure.
    """
    if not trust_anchors:
        raise SignerNotTrusted("no trust anchors configured")
    if leaf in trust_anchors:
        when = at or _dt.datetime.now(_dt.timezone.utc)
        if not leaf.not_valid_before_utc <= when <= leaf.not_valid_after_utc:
            raise SignerNotTrusted("pinned signer certificate is outside its validity period")
        return [leaf]
    ca_policy, ee_policy = _policies()
    builder = (xv.PolicyBuilder().store(xv.Store(list(trust_anchors)))
               .time(at or _dt.datetime.now(_dt.timezone.utc)).max_chain_depth(max_depth)
               .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy))
    try:
        verified = builder.build_client_verifier().verify(leaf, [c for c in untrusted if c != leaf])
    except xv.VerificationError as exc:
        raise SignerNotTrusted(f"signer certificate does not chain to a trust anchor: {exc}") from None
    except ValueError as exc:
        raise SignerNotTrusted(f"signer certificate rejected: {exc}") from None
    return list(verified.chain)
