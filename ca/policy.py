"""Profile enforcement: turn a request (subject, key, requested SANs and extensions, validity)
into the exact content of a certificate, or a :class:`~ca.errors.ProfileViolation` listing every
broken rule. Pure functions: no signing, no storage.

Validity rule (documented choice): an explicitly requested lifetime that would end after the
CA certificate is refused (``validity-beyond-ca``); the profile's *default* lifetime is clamped
to the CA's notAfter instead. notBefore is backdated one minute for clock skew (never before
the CA's notBefore).
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from hsm.types import KeyType

from .errors import ProfileViolation, Violation, ViolationCode
from .profiles import ATTR_BY_OID, EKU_BY_OID, KeyUsageBit, Profile, SanType, SubjectAttr
from .types import describe_key, key_type_of

log = logging.getLogger(__name__)

BACKDATE: Final = dt.timedelta(minutes=1)
MAX_SANS: Final = 100
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_KU_ATTR: Final = {
    KeyUsageBit.DIGITAL_SIGNATURE: "digital_signature", KeyUsageBit.CONTENT_COMMITMENT: "content_commitment",
    KeyUsageBit.KEY_ENCIPHERMENT: "key_encipherment", KeyUsageBit.DATA_ENCIPHERMENT: "data_encipherment",
    KeyUsageBit.KEY_AGREEMENT: "key_agreement",
}
_NOT_FOR_EC: Final = frozenset({KeyUsageBit.KEY_ENCIPHERMENT, KeyUsageBit.DATA_ENCIPHERMENT})
_NOT_FOR_RSA: Final = frozenset({KeyUsageBit.KEY_AGREEMENT})


@dataclass(frozen=True)
class Plan:
    """What the certificate will contain (everything except serial, issuer and key ids)."""

    subject: x509.Name
    key_type: KeyType
    sans: tuple[x509.GeneralName, ...]
    key_usage: frozenset[KeyUsageBit]
    not_before: dt.datetime
    not_after: dt.datetime


def is_dns_name(value: str, *, wildcard: bool = True) -> bool:
    """LDH host name (A-labels), at most 253 characters, optional leading ``*.`` label."""
    if not value.isascii() or not 0 < len(value) <= 253:
        return False
    labels = value.split(".")
    if wildcard and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    return all(_LABEL.fullmatch(label) for label in labels)


def _san_text(name: x509.GeneralName) -> tuple[SanType | None, str]:
    if isinstance(name, x509.DNSName):
        return SanType.DNS, name.value
    if isinstance(name, x509.IPAddress):
        return SanType.IP, str(name.value)
    if isinstance(name, x509.UniformResourceIdentifier):
        return SanType.URI, name.value
    if isinstance(name, x509.RFC822Name):
        return SanType.EMAIL, name.value
    return None, type(name).__name__


def san_strings(sans: Sequence[x509.GeneralName]) -> tuple[str, ...]:
    """``DNS:x``, ``IP:x``, ``URI:x``, ``email:x`` forms for records and search."""
    prefix = {SanType.DNS: "DNS", SanType.IP: "IP", SanType.URI: "URI", SanType.EMAIL: "email"}
    out = []
    for n in sans:
        kind, text = _san_text(n)
        out.append(f"{prefix[kind]}:{text}" if kind else f"other:{text}")
    return tuple(out)


def _san_syntax_ok(kind: SanType, value: str) -> bool:
    if kind is SanType.DNS:
        return is_dns_name(value)
    if kind is SanType.EMAIL:
        local, sep, domain = value.rpartition("@")
        return bool(sep and local and value.isascii() and " " not in value and len(value) <= 254
                    and is_dns_name(domain, wildcard=False))
    if kind is SanType.URI:
        if not value.isascii() or len(value) > 2048 or any(c.isspace() for c in value):
            return False
        parts = urlsplit(value)
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", parts.scheme or ""):
            return False
        return parts.scheme.lower() not in ("http", "https") or bool(parts.hostname)
    return True  # IP addresses are parsed already


def effective_key_usage(profile: Profile, key_type: KeyType) -> frozenset[KeyUsageBit]:
    """The profile's key usages minus those meaningless for the key's algorithm."""
    drop = _NOT_FOR_EC if key_type.is_ec else _NOT_FOR_RSA
    return frozenset(profile.key_usage - drop)


def key_usage_extension(bits: frozenset[KeyUsageBit]) -> x509.KeyUsage:
    flags = {attr: (bit in bits) for bit, attr in _KU_ATTR.items()}
    return x509.KeyUsage(key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False, **flags)


def evaluate(profile: Profile, *, ca_certificate: x509.Certificate, subject: x509.Name,
             public_key: PublicKeyTypes, sans: Sequence[x509.GeneralName],
             extensions: Sequence[x509.Extension[x509.ExtensionType]], validity: dt.timedelta | None,
             not_after: dt.datetime | None, now: dt.datetime, server_keygen: bool = False) -> Plan:
    """Check a request against ``profile`` and return the certificate plan; raise
    ProfileViolation with every violation found. ``extensions`` are the requested ones (from the
    CSR); only SAN, keyUsage, extendedKeyUsage and basicConstraints are looked at — a SAN
    extension there is merged with ``sans``; the others are ignored (never copied)."""
    v: list[Violation] = []

    def bad(code: ViolationCode, where: str, detail: str) -> None:
        v.append(Violation(code, where, detail))

    if server_keygen and not profile.allow_server_keygen:
        bad(ViolationCode.SERVER_KEYGEN_NOT_ALLOWED, "key", "this profile does not allow server-side key generation")

    # key
    key_type = key_type_of(public_key)
    if key_type is None or key_type not in profile.key_types:
        allowed = ", ".join(sorted(k.value for k in profile.key_types))
        bad(ViolationCode.KEY_TYPE_NOT_ALLOWED, "key", f"{describe_key(public_key)} is not allowed (allowed: {allowed})")
    ku = effective_key_usage(profile, key_type) if key_type else frozenset()
    if key_type is not None and not ku:
        bad(ViolationCode.KEY_USAGE_NOT_ALLOWED, "key", f"the profile grants no key usage for a {key_type.value} key")

    # requested extensions: never copied, but a request for more than the profile gives is refused
    requested_sans = list(sans)
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            requested_sans.extend(value)
        elif isinstance(value, x509.BasicConstraints):
            if value.ca:
                bad(ViolationCode.EXTENSION_NOT_ALLOWED, "extensions.basicConstraints",
                    "a CA certificate cannot be requested under an end-entity profile")
        elif isinstance(value, x509.KeyUsage):
            asked = {bit for bit, attr in _KU_ATTR.items() if getattr(value, attr)}
            if value.key_cert_sign or value.crl_sign:
                bad(ViolationCode.KEY_USAGE_NOT_ALLOWED, "extensions.keyUsage", "keyCertSign/cRLSign are CA usages")
            extra = asked - ku
            if extra:
                bad(ViolationCode.KEY_USAGE_NOT_ALLOWED, "extensions.keyUsage",
                    "not granted by the profile: " + ", ".join(sorted(b.value for b in extra)))
        elif isinstance(value, x509.ExtendedKeyUsage):
            granted = {e.oid for e in profile.extended_key_usage}
            extra_oids = [oid for oid in value if oid not in granted]
            if extra_oids:
                names = [EKU_BY_OID[o].value if o in EKU_BY_OID else
                         ("anyExtendedKeyUsage" if o == ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE else o.dotted_string)
                         for o in extra_oids]
                bad(ViolationCode.KEY_USAGE_NOT_ALLOWED, "extensions.extendedKeyUsage",
                    "not granted by the profile: " + ", ".join(names))
        else:
            log.debug("ignoring requested extension %s", ext.oid.dotted_string)

    # subject: rebuilt attribute by attribute (single-valued RDNs, default encodings)
    counts: dict[SubjectAttr, int] = {}
    attributes: list[x509.NameAttribute[str]] = []
    cn: str | None = None
    for rdn in subject.rdns:
        for attribute in rdn:
            attr = ATTR_BY_OID.get(attribute.oid)
            label = attr.value if attr else (attribute.oid._name if attribute.oid._name != "Unknown OID"
                                             else attribute.oid.dotted_string)
            where = f"subject.{label}"
            rule = profile.subject.get(attr) if attr else None
            if attr is None or rule is None:
                bad(ViolationCode.SUBJECT_ATTRIBUTE_NOT_ALLOWED, where, "attribute not allowed by the profile")
                continue
            text = attribute.value
            if not isinstance(text, str) or not text or len(text) > attr.max_length \
                    or (attr is SubjectAttr.C and not re.fullmatch(r"[A-Z]{2}", text)) \
                    or any(ord(c) < 0x20 for c in text):
                bad(ViolationCode.SUBJECT_ATTRIBUTE_SYNTAX, where,
                    f"must be 1..{attr.max_length} printable characters" + (" (ISO 3166 code)" if attr is SubjectAttr.C else ""))
                continue
            counts[attr] = counts.get(attr, 0) + 1
            if counts[attr] > rule.max_count:
                bad(ViolationCode.SUBJECT_ATTRIBUTE_REPEATED, where, f"at most {rule.max_count} allowed")
                continue
            if not rule.matches(text):
                bad(ViolationCode.SUBJECT_ATTRIBUTE_MISMATCH, where, f"{text!r} does not match the allowed patterns")
                continue
            if attr is SubjectAttr.CN and cn is None:
                cn = text
            attributes.append(x509.NameAttribute(attribute.oid, text))
    for attr, rule in profile.subject.items():
        if rule.required and attr not in counts:
            bad(ViolationCode.SUBJECT_ATTRIBUTE_MISSING, f"subject.{attr.value}", "required by the profile")

    # SANs
    if len(requested_sans) > MAX_SANS:
        bad(ViolationCode.TOO_MANY_SANS, "san", f"at most {MAX_SANS} names")
        requested_sans = requested_sans[:MAX_SANS]
    if cn is not None and profile.copy_cn_to_san and SanType.DNS in profile.san and is_dns_name(cn) \
            and profile.san[SanType.DNS].matches(cn) \
            and not any(isinstance(n, x509.DNSName) and n.value.lower() == cn.lower() for n in requested_sans):
        requested_sans.insert(0, x509.DNSName(cn))
    final_sans: list[x509.GeneralName] = []
    per_type: dict[SanType, int] = {}
    seen: set[tuple[SanType, str]] = set()
    for i, name in enumerate(requested_sans):
        kind, text = _san_text(name)
        where = f"san[{i}]"
        if kind is None or kind not in profile.san:
            bad(ViolationCode.SAN_TYPE_NOT_ALLOWED, where,
                f"{kind.value if kind else text} names are not allowed by the profile")
            continue
        if not _san_syntax_ok(kind, text):
            bad(ViolationCode.SAN_SYNTAX, where, f"{text!r} is not a valid {kind.value} name")
            continue
        key = (kind, text.lower())
        if key in seen:
            continue  # duplicates are dropped silently
        seen.add(key)
        srule = profile.san[kind]
        if not srule.matches(text):
            bad(ViolationCode.SAN_MISMATCH, where, f"{kind.value} {text!r} does not match the allowed patterns")
            continue
        per_type[kind] = per_type.get(kind, 0) + 1
        if per_type[kind] > srule.max_count:
            bad(ViolationCode.TOO_MANY_SANS, where, f"at most {srule.max_count} {kind.value} names")
            continue
        final_sans.append(name)
    if profile.require_san and not final_sans and not any(x.code.value.startswith("san") for x in v):
        bad(ViolationCode.SAN_MISSING, "san", "the profile requires at least one subject alternative name")
    if not attributes and not final_sans and not v:
        bad(ViolationCode.SUBJECT_ATTRIBUTE_MISSING, "subject", "an empty subject needs a subject alternative name")

    # validity
    ca_not_after = ca_certificate.not_valid_after_utc
    start = max(now - BACKDATE, ca_certificate.not_valid_before_utc)
    end: dt.datetime | None = None
    if validity is not None and not_after is not None:
        bad(ViolationCode.VALIDITY_INVALID, "validity", "give a lifetime or a notAfter, not both")
    elif validity is not None or not_after is not None:
        if not_after is not None:
            if not_after.tzinfo is None:
                bad(ViolationCode.VALIDITY_INVALID, "not_after", "must be timezone-aware")
                not_after = None
            else:
                validity = not_after.astimezone(dt.timezone.utc).replace(microsecond=0) - now
        if validity is not None:
            if validity <= dt.timedelta(0):
                bad(ViolationCode.VALIDITY_INVALID, "validity", "the lifetime must be positive")
            elif validity > profile.max_validity:
                bad(ViolationCode.VALIDITY_TOO_LONG, "validity",
                    f"at most {profile.max_validity.days} days under this profile")
            else:
                end = now + validity
                if end > ca_not_after:
                    bad(ViolationCode.VALIDITY_BEYOND_CA, "validity",
                        f"would end after the CA certificate ({ca_not_after.isoformat()})")
    else:
        end = min(now + profile.default_validity, ca_not_after)

    if v:
        raise ProfileViolation(profile.name, v)
    assert key_type is not None and end is not None
    return Plan(subject=x509.Name([x509.RelativeDistinguishedName([a]) for a in attributes]),
                key_type=key_type, sans=tuple(final_sans), key_usage=ku, not_before=start, not_after=end)


def end_entity_extensions(profile: Profile, plan: Plan, *, public_key: CertificatePublicKeyTypes,
                          issuer_ski: x509.SubjectKeyIdentifier
                          ) -> list[tuple[x509.ExtensionType, bool]]:
    """(extension, critical) pairs for an end-entity certificate under ``profile``: those the
    profile and the issuer decide (:func:`profile_extensions`), then those of the subject
    (:func:`subject_extensions`)."""
    return [*profile_extensions(profile, plan.key_type, issuer_ski=issuer_ski),
            *subject_extensions(plan, public_key=public_key)]


def profile_extensions(profile: Profile, key_type: KeyType, *, issuer_ski: x509.SubjectKeyIdentifier
                       ) -> list[tuple[x509.ExtensionType, bool]]:
    """The extensions every certificate of ``profile`` for a ``key_type`` key carries from this
    issuer: basicConstraints, keyUsage, extendedKeyUsage, AKI, CRL distribution point, AIA."""
    exts: list[tuple[x509.ExtensionType, bool]] = []
    if profile.basic_constraints:
        exts.append((x509.BasicConstraints(ca=False, path_length=None), True))
    exts.append((key_usage_extension(effective_key_usage(profile, key_type)), True))
    if profile.extended_key_usage:
        exts.append((x509.ExtendedKeyUsage([e.oid for e in profile.extended_key_usage]), False))
    exts.append((x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), False))
    exts.extend(distribution_extensions(profile.crl_url, profile.ocsp_url, profile.ca_issuers_url))
    return exts


def subject_extensions(plan: Plan, *, public_key: CertificatePublicKeyTypes) -> list[tuple[x509.ExtensionType, bool]]:
    """The extensions of this subject: its SANs (critical when the subject is empty) and its SKI."""
    exts: list[tuple[x509.ExtensionType, bool]] = []
    if plan.sans:
        exts.append((x509.SubjectAlternativeName(list(plan.sans)), len(plan.subject) == 0))
    exts.append((x509.SubjectKeyIdentifier.from_public_key(public_key), False))
    return exts


def distribution_extensions(crl_url: str | None, ocsp_url: str | None, ca_issuers_url: str | None
                            ) -> list[tuple[x509.ExtensionType, bool]]:
    exts: list[tuple[x509.ExtensionType, bool]] = []
    if crl_url:
        exts.append((x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)], relative_name=None, reasons=None,
            crl_issuer=None)]), False))
    access = []
    if ocsp_url:
        access.append(x509.AccessDescription(x509.oid.AuthorityInformationAccessOID.OCSP,
                                             x509.UniformResourceIdentifier(ocsp_url)))
    if ca_issuers_url:
        access.append(x509.AccessDescription(x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                                             x509.UniformResourceIdentifier(ca_issuers_url)))
    if access:
        exts.append((x509.AuthorityInformationAccess(access), False))
    return exts


def issuer_ski(ca_certificate: x509.Certificate) -> x509.SubjectKeyIdentifier:
    """The CA's SKI extension, or the RFC 5280 method-1 key id if the certificate lacks one."""
    try:
        return ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(ca_certificate.public_key())


def is_ec_or_rsa(key: object) -> bool:
    return isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey))


__all__ = ["BACKDATE", "Plan", "distribution_extensions", "effective_key_usage", "end_entity_extensions",
           "evaluate", "is_dns_name", "issuer_ski", "key_usage_extension", "profile_extensions", "san_strings",
           "subject_extensions"]
