"""The CA engine as the CMP server's :class:`ca.cmp.Issuer`: one CA, CMP aliases mapped to
engine profiles, engine errors translated into CMP failure leaves.

    issuer = EngineIssuer(engine, "issuing-ca", profiles={"onap": "tls-mutual"})
    server = CmpServer(cfg, issuer=issuer, transactions=..., signer=ResponseSigner(
        engine.signing_key("issuing-ca"), ca_cert, chain))

Mapping of refusals (the CMP server turns them into PKIStatusInfo failInfo bits):
ProfileViolation → badCertTemplate (the violations in the detail text); CsrSignatureInvalid →
badPOP; InvalidCsr → badDataFormat; ProfileNotFound / InvalidRequest → badRequest; CaNotUsable
and an unavailable token → systemUnavail; UnknownSerial / another CA's certificate → badCertId;
AlreadyRevoked → certRevoked. A kur records the new certificate as a renewal of the old one.

Root CA key update (RFC 9480 §2.4, RFC 9483 §4.3.2): csm has no root-key rollover, so there is
never a newer root to announce and :meth:`EngineIssuer.root_ca_key_update` returns None, which the
CMP server answers with id-it-rootCaKeyUpdate and an absent infoValue ("no update available").
An update must carry newWithOld (the new root key certified by the old one, RFC 9483 §4.3.2) for
a client to chain the new root to the one it trusts, and only a rollover in the engine can make
it; so a same-name root created beside the old one is not announced.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping

from cryptography import x509

from client_sdk.cmp import BodyType, RevocationReason, errors

from .cmp.interfaces import IssuedCertificate as CmpIssued
from .cmp.interfaces import IssueRequest as CmpIssueRequest
from .cmp.interfaces import Requester, RootCaKeyUpdate
from .engine import CaEngine, IssuedCertificate
from .errors import (
    AlreadyRevoked,
    CaNotUsable,
    CsrSignatureInvalid,
    InvalidCsr,
    InvalidRequest,
    ProfileNotFound,
    ProfileViolation,
    UnknownSerial,
)
from .types import IssueRequest, KeyIssueRequest, RevokeRequest

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1024)
def requester_id(requester: Requester) -> str:
    """``cmp:<alias>:<sender>`` — the identity recorded with certificates issued over CMP
    (cached: a client sends as the same requester every time)."""
    value = requester.sender.value
    text = value.rfc4514_string() if isinstance(value, x509.Name) else str(value)
    return f"cmp:{requester.profile}:{text}"


class EngineIssuer:
    """Implements :class:`ca.cmp.Issuer` for CA ``ca_name`` of ``engine``. ``profiles`` maps a
    CMP alias to an engine profile name (default: the alias itself)."""

    def __init__(self, engine: CaEngine, ca_name: str, *, profiles: Mapping[str, str] | None = None,
                 identify: Callable[[Requester], str] = requester_id) -> None:
        self._engine = engine
        self._ca = engine.get_ca(ca_name).name
        self._profiles = dict(profiles or {})
        self._identify = identify

    def issue(self, request: CmpIssueRequest, *,
              before_store: Callable[[CmpIssued], None] | None = None) -> CmpIssued:
        req = request
        profile = self._profiles.get(req.profile, req.profile)
        who = self._identify(req.requester)
        renewal_of = None
        if req.body_type is BodyType.KUR and req.old_certificate is not None:
            renewal_of = self._own_serial(req.old_certificate)
        hook: Callable[[x509.Certificate], None] | None = None
        if before_store is not None:
            def hook(cert: x509.Certificate) -> None:
                before_store(CmpIssued(certificate=cert, chain=_intermediates(self._engine.chain(self._ca))))
        try:
            issued: IssuedCertificate
            if req.csr is not None:
                issued = self._engine.issue(IssueRequest(ca=self._ca, profile=profile, csr=req.csr, requester=who,
                                                         not_after=req.not_after, renewal_of=renewal_of),
                                            before_store=hook)
            else:
                exts = tuple(e for e in req.extensions if not isinstance(e.value, x509.UnrecognizedExtension))
                issued = self._engine.issue_for_key(KeyIssueRequest(
                    ca=self._ca, profile=profile, subject=req.subject, public_key=req.public_key, requester=who,
                    extensions=exts, not_after=req.not_after, renewal_of=renewal_of), before_store=hook)
        except ProfileViolation as exc:
            raise errors.BadCertTemplate("; ".join(f"{v.field}: {v.detail}" for v in exc.violations)) from None
        except CsrSignatureInvalid:
            raise errors.BadPOP("the PKCS#10 signature does not verify") from None
        except InvalidCsr as exc:
            raise errors.BadDataFormat(exc.reason) from None
        except (ProfileNotFound, InvalidRequest) as exc:
            raise errors.BadRequest(str(exc)) from None
        except CaNotUsable as exc:
            raise errors.SystemUnavail(exc.reason) from None
        except Exception as exc:
            from hsm.errors import TokenUnavailable

            if isinstance(exc, TokenUnavailable):
                raise errors.SystemUnavail("the CA key is unavailable, try later") from None
            raise
        return CmpIssued(certificate=issued.certificate, chain=_intermediates(issued.chain))

    def _own_serial(self, certificate: x509.Certificate) -> int | None:
        try:
            record = self._engine.get_certificate(certificate.serial_number)
        except UnknownSerial:
            return None
        return record.serial if record.ca_name == self._ca and record.der == _der(certificate) else None

    def revoke(self, serial_number: int, issuer: x509.Name, reason: RevocationReason | None,
               requester: Requester) -> None:
        ca_cert = self._engine.get_ca(self._ca).certificate
        if issuer != ca_cert.subject:
            raise errors.BadCertId("the certificate was not issued by this CA")
        try:
            self._engine.revoke(RevokeRequest(serial=serial_number, reason=reason or RevocationReason.UNSPECIFIED,
                                              requester=self._identify(requester), ca=self._ca))
        except UnknownSerial:
            raise errors.BadCertId("unknown certificate") from None
        except AlreadyRevoked:
            raise errors.CertRevoked("the certificate is already revoked") from None
        except InvalidRequest as exc:
            raise errors.BadRequest(str(exc)) from None

    def is_revoked(self, certificate: x509.Certificate) -> bool:
        """True if this CA revoked (or holds) the certificate; False for unknown ones."""
        try:
            record = self._engine.get_certificate(certificate.serial_number)
        except UnknownSerial:
            return False
        return record.ca_name == self._ca and record.der == _der(certificate) and record.revocation is not None

    def ca_certificates(self) -> tuple[x509.Certificate, ...]:
        return self._engine.chain(self._ca)

    def root_ca_key_update(self) -> RootCaKeyUpdate | None:
        """None: no update available (see the module docstring)."""
        return None


def _intermediates(chain: tuple[x509.Certificate, ...]) -> tuple[x509.Certificate, ...]:
    """The CA chain without self-signed certificates (what a CMP answer carries in extraCerts)."""
    return tuple(c for c in chain if c.subject != c.issuer)


def _der(certificate: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return certificate.public_bytes(Encoding.DER)


__all__ = ["EngineIssuer", "requester_id"]
