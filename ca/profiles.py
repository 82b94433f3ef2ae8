"""Certificate profiles: what a CA will put into a certificate, whatever the request asks for.

A :class:`Profile` is named and bound to one CA. It decides the allowed key types, default and
maximum validity, keyUsage / extendedKeyUsage, the end-entity basicConstraints, which subject
attributes and SAN types are allowed (with regular-expression patterns, full match), and the
CRL distribution point / OCSP URL (AIA) written into issued certificates. Extensions of a
request are never copied: the SANs are taken only after every one matched a rule, and asking
for a CA certificate or for key usages beyond the profile is a violation.

Profiles serialise to a JSON-able dict (:meth:`Profile.to_dict` / :meth:`Profile.from_dict`)
so the service can store custom ones. Patterns are Python ``re`` syntax, matched with
``fullmatch`` against inputs whose length the engine bounds first.

Key usages that make no sense for the subject key's algorithm are dropped at issuance
(keyEncipherment/dataEncipherment for EC keys, keyAgreement for RSA keys), so one profile
serves both RSA and EC keys.
"""
from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hsm.types import KeyType

from .errors import InvalidProfile

PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_MAX_PATTERN = 1024


class SanType(enum.Enum):
    DNS = "dns"
    IP = "ip"
    URI = "uri"
    EMAIL = "email"


class SubjectAttr(enum.Enum):
    """Subject attributes a profile may allow (the value is the RFC 4514 short name)."""

    CN = "CN"
    O = "O"  # noqa: E741
    OU = "OU"
    C = "C"
    ST = "ST"
    L = "L"
    SERIAL_NUMBER = "serialNumber"
    DC = "DC"

    @property
    def oid(self) -> x509.ObjectIdentifier:
        return _ATTR_OIDS[self]

    @property
    def max_length(self) -> int:
        """RFC 5280 upper bounds (ub-*)."""
        return _ATTR_MAX[self]


_ATTR_OIDS: Final = {
    SubjectAttr.CN: NameOID.COMMON_NAME, SubjectAttr.O: NameOID.ORGANIZATION_NAME,
    SubjectAttr.OU: NameOID.ORGANIZATIONAL_UNIT_NAME, SubjectAttr.C: NameOID.COUNTRY_NAME,
    SubjectAttr.ST: NameOID.STATE_OR_PROVINCE_NAME, SubjectAttr.L: NameOID.LOCALITY_NAME,
    SubjectAttr.SERIAL_NUMBER: NameOID.SERIAL_NUMBER, SubjectAttr.DC: NameOID.DOMAIN_COMPONENT,
}
ATTR_BY_OID: Final = {oid: attr for attr, oid in _ATTR_OIDS.items()}
_ATTR_MAX: Final = {
    SubjectAttr.CN: 64, SubjectAttr.O: 64, SubjectAttr.OU: 64, SubjectAttr.C: 2, SubjectAttr.ST: 128,
    SubjectAttr.L: 128, SubjectAttr.SERIAL_NUMBER: 64, SubjectAttr.DC: 63,
}


class KeyUsageBit(enum.Enum):
    """End-entity keyUsage bits (keyCertSign and cRLSign belong to CA certificates only)."""

    DIGITAL_SIGNATURE = "digitalSignature"
    CONTENT_COMMITMENT = "contentCommitment"
    KEY_ENCIPHERMENT = "keyEncipherment"
    DATA_ENCIPHERMENT = "dataEncipherment"
    KEY_AGREEMENT = "keyAgreement"


class ExtendedKeyUsage(enum.Enum):
    SERVER_AUTH = "serverAuth"
    CLIENT_AUTH = "clientAuth"
    CODE_SIGNING = "codeSigning"
    EMAIL_PROTECTION = "emailProtection"
    TIME_STAMPING = "timeStamping"
    OCSP_SIGNING = "OCSPSigning"

    @property
    def oid(self) -> x509.ObjectIdentifier:
        return _EKU_OIDS[self]


_EKU_OIDS: Final = {
    ExtendedKeyUsage.SERVER_AUTH: ExtendedKeyUsageOID.SERVER_AUTH,
    ExtendedKeyUsage.CLIENT_AUTH: ExtendedKeyUsageOID.CLIENT_AUTH,
    ExtendedKeyUsage.CODE_SIGNING: ExtendedKeyUsageOID.CODE_SIGNING,
    ExtendedKeyUsage.EMAIL_PROTECTION: ExtendedKeyUsageOID.EMAIL_PROTECTION,
    ExtendedKeyUsage.TIME_STAMPING: ExtendedKeyUsageOID.TIME_STAMPING,
    ExtendedKeyUsage.OCSP_SIGNING: ExtendedKeyUsageOID.OCSP_SIGNING,
}
EKU_BY_OID: Final = {oid: eku for eku, oid in _EKU_OIDS.items()}

# Patterns for the built-in profiles.
DNS_NAME: Final = r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
ANY: Final = r".+"
PRINTABLE: Final = r"[A-Za-z0-9 '()+,\-./:=?_@]+"
COUNTRY: Final = r"[A-Z]{2}"


@dataclass(frozen=True)
class AttributeRule:
    """One allowed subject attribute: required or optional, how many times, value patterns
    (any one must match in full)."""

    required: bool = False
    patterns: tuple[str, ...] = (ANY,)
    max_count: int = 1

    def matches(self, value: str) -> bool:
        return any(_compiled(p).fullmatch(value) for p in self.patterns)


@dataclass(frozen=True)
class SanRule:
    """One allowed SAN type: at most ``max_count`` entries, each matching one of ``patterns``
    (for IP addresses: the textual address) and, for IPs, lying in one of ``networks`` if any
    are given."""

    patterns: tuple[str, ...] = (ANY,)
    max_count: int = 20
    networks: tuple[str, ...] = ()

    def matches(self, value: str) -> bool:
        if not any(_compiled(p).fullmatch(value) for p in self.patterns):
            return False
        if self.networks:
            addr = ipaddress.ip_address(value)
            return any(addr in ipaddress.ip_network(n, strict=False) for n in self.networks)
        return True


_PATTERN_CACHE: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    rx = _PATTERN_CACHE.get(pattern)
    if rx is None:
        rx = _PATTERN_CACHE[pattern] = re.compile(pattern)
    return rx


def _td(value: dt.timedelta) -> int:
    return int(value.total_seconds())


@dataclass(frozen=True)
class Profile:
    """A named certificate profile bound to CA ``ca``. Construction validates the definition
    and raises :class:`~ca.errors.InvalidProfile` listing every problem."""

    name: str
    ca: str
    key_types: frozenset[KeyType]
    default_validity: dt.timedelta
    max_validity: dt.timedelta
    key_usage: frozenset[KeyUsageBit]
    extended_key_usage: tuple[ExtendedKeyUsage, ...] = ()
    subject: Mapping[SubjectAttr, AttributeRule] = field(default_factory=dict)
    san: Mapping[SanType, SanRule] = field(default_factory=dict)
    require_san: bool = False
    copy_cn_to_san: bool = False
    basic_constraints: bool = True  # add basicConstraints cA=FALSE (critical)
    crl_url: str | None = None
    ocsp_url: str | None = None
    ca_issuers_url: str | None = None
    allow_server_keygen: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not isinstance(self.name, str) or not PROFILE_NAME.fullmatch(self.name):
            problems.append("name must match [a-z0-9][a-z0-9._-]{0,62}")
        if not isinstance(self.ca, str) or not self.ca:
            problems.append("ca must name a CA")
        if not self.key_types or any(not isinstance(k, KeyType) or not k.is_asymmetric for k in self.key_types):
            problems.append("key_types must list RSA or EC key types")
        if not dt.timedelta(minutes=5) <= self.default_validity <= self.max_validity:
            problems.append("default_validity must be at least 5 minutes and at most max_validity")
        if self.max_validity > dt.timedelta(days=3650):
            problems.append("max_validity must not exceed 10 years")
        if not self.key_usage or any(not isinstance(k, KeyUsageBit) for k in self.key_usage):
            problems.append("key_usage must list at least one end-entity key usage")
        if any(not isinstance(e, ExtendedKeyUsage) for e in self.extended_key_usage) \
                or len(set(self.extended_key_usage)) != len(self.extended_key_usage):
            problems.append("extended_key_usage must list distinct ExtendedKeyUsage values")
        for attr, rule in self.subject.items():
            if not isinstance(attr, SubjectAttr) or not isinstance(rule, AttributeRule):
                problems.append("subject maps SubjectAttr to AttributeRule")
                continue
            problems += _pattern_problems(f"subject.{attr.value}", rule.patterns)
            if rule.max_count < 1:
                problems.append(f"subject.{attr.value}.max_count must be >= 1")
        for san_type, srule in self.san.items():
            if not isinstance(san_type, SanType) or not isinstance(srule, SanRule):
                problems.append("san maps SanType to SanRule")
                continue
            problems += _pattern_problems(f"san.{san_type.value}", srule.patterns)
            if srule.max_count < 1:
                problems.append(f"san.{san_type.value}.max_count must be >= 1")
            if srule.networks and san_type is not SanType.IP:
                problems.append(f"san.{san_type.value}: networks apply to IP addresses only")
            for net in srule.networks:
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    problems.append(f"san.ip: {net!r} is not a network")
        if self.require_san and not self.san:
            problems.append("require_san needs at least one allowed SAN type")
        for attr_name in ("crl_url", "ocsp_url", "ca_issuers_url"):
            url = getattr(self, attr_name)
            if url is not None and not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", url):
                problems.append(f"{attr_name} must be an http(s) URL")
        if problems:
            raise InvalidProfile(problems)

    # -- serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` restores an equal profile."""
        return {
            "name": self.name,
            "ca": self.ca,
            "description": self.description,
            "key_types": sorted(k.value for k in self.key_types),
            "default_validity_seconds": _td(self.default_validity),
            "max_validity_seconds": _td(self.max_validity),
            "key_usage": sorted(k.value for k in self.key_usage),
            "extended_key_usage": [e.value for e in self.extended_key_usage],
            "subject": {a.value: {"required": r.required, "patterns": list(r.patterns), "max_count": r.max_count}
                        for a, r in self.subject.items()},
            "san": {t.value: {"patterns": list(r.patterns), "max_count": r.max_count, "networks": list(r.networks)}
                    for t, r in self.san.items()},
            "require_san": self.require_san,
            "copy_cn_to_san": self.copy_cn_to_san,
            "basic_constraints": self.basic_constraints,
            "crl_url": self.crl_url,
            "ocsp_url": self.ocsp_url,
            "ca_issuers_url": self.ca_issuers_url,
            "allow_server_keygen": self.allow_server_keygen,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """Parse the form made by :meth:`to_dict`; unknown keys and values are refused
        (InvalidProfile listing the problems)."""
        if not isinstance(data, Mapping):
            raise InvalidProfile(["a profile must be a JSON object"])
        unknown = set(data) - _FIELDS
        if unknown:
            raise InvalidProfile([f"unknown field {k!r}" for k in sorted(map(str, unknown))])
        try:
            subject = {SubjectAttr(k): AttributeRule(required=bool(v.get("required", False)),
                                                     patterns=_str_tuple(v.get("patterns", [ANY])),
                                                     max_count=int(v.get("max_count", 1)))
                       for k, v in dict(data.get("subject", {})).items()}
            san = {SanType(k): SanRule(patterns=_str_tuple(v.get("patterns", [ANY])),
                                       max_count=int(v.get("max_count", 20)),
                                       networks=_str_tuple(v.get("networks", [])))
                   for k, v in dict(data.get("san", {})).items()}
            return cls(
                name=_str(data["name"]),
                ca=_str(data["ca"]),
                description=_str(data.get("description", "")),
                key_types=frozenset(KeyType(k) for k in data["key_types"]),
                default_validity=dt.timedelta(seconds=int(data["default_validity_seconds"])),
                max_validity=dt.timedelta(seconds=int(data["max_validity_seconds"])),
                key_usage=frozenset(KeyUsageBit(k) for k in data["key_usage"]),
                extended_key_usage=tuple(ExtendedKeyUsage(e) for e in data.get("extended_key_usage", [])),
                subject=subject,
                san=san,
                require_san=_bool(data.get("require_san", False)),
                copy_cn_to_san=_bool(data.get("copy_cn_to_san", False)),
                basic_constraints=_bool(data.get("basic_constraints", True)),
                crl_url=_opt_str(data.get("crl_url")),
                ocsp_url=_opt_str(data.get("ocsp_url")),
                ca_issuers_url=_opt_str(data.get("ca_issuers_url")),
                allow_server_keygen=_bool(data.get("allow_server_keygen", True)),
            )
        except InvalidProfile:
            raise
        except KeyError as exc:
            raise InvalidProfile([f"missing field {exc.args[0]!r}"]) from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidProfile([str(exc)]) from None

    def with_ca(self, ca: str) -> Profile:
        """The same profile bound to another CA."""
        return Profile.from_dict({**self.to_dict(), "ca": ca})


_FIELDS: Final = frozenset({
    "name", "ca", "description", "key_types", "default_validity_seconds", "max_validity_seconds", "key_usage",
    "extended_key_usage", "subject", "san", "require_san", "copy_cn_to_san", "basic_constraints", "crl_url",
    "ocsp_url", "ca_issuers_url", "allow_server_keygen",
})


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _opt_str(v: object) -> str | None:
    return None if v is None else _str(v)


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected a boolean, got {type(v).__name__}")
    return v


def _str_tuple(v: object) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)):
        raise TypeError("expected a list of strings")
    return tuple(_str(x) for x in v)


def _pattern_problems(where: str, patterns: tuple[str, ...]) -> list[str]:
    out = []
    if not patterns:
        out.append(f"{where}: at least one pattern is needed")
    for p in patterns:
        if not isinstance(p, str) or len(p) > _MAX_PATTERN:
            out.append(f"{where}: patterns must be strings of at most {_MAX_PATTERN} characters")
            continue
        try:
            re.compile(p)
        except re.error as exc:
            out.append(f"{where}: bad pattern {p!r}: {exc}")
    return out


# -- built-in profiles ----------------------------------------------------------------------------

_ALL_KEYS: Final = frozenset({KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048, KeyType.RSA_3072,
                              KeyType.RSA_4096})
_OPTIONAL_ORG: Final = {
    SubjectAttr.O: AttributeRule(patterns=(PRINTABLE,)),
    SubjectAttr.OU: AttributeRule(patterns=(PRINTABLE,), max_count=4),
    SubjectAttr.C: AttributeRule(patterns=(COUNTRY,)),
    SubjectAttr.ST: AttributeRule(patterns=(PRINTABLE,)),
    SubjectAttr.L: AttributeRule(patterns=(PRINTABLE,)),
}
BUILTIN_NAMES: Final = ("tls-server", "tls-client", "tls-mutual")


def builtin_profiles(ca: str, *, crl_url: str | None = None, ocsp_url: str | None = None,
                     ca_issuers_url: str | None = None) -> tuple[Profile, ...]:
    """The built-in profiles bound to CA ``ca``:

    * ``tls-server``: serverAuth; at least one DNS or IP SAN (a DNS-like CN is copied into the
      SANs); 90 days by default, at most 397.
    * ``tls-client``: clientAuth; CN required (printable), optional DNS/IP/URI/email SANs;
      90 days by default, at most 397.
    * ``tls-mutual``: serverAuth + clientAuth, the ONAP/microservice default (CN required and
      copied into the DNS SANs when it is a host name; DNS/IP/URI/email SANs); 1 year by
      default, at most 2.
    """
    ku_tls = frozenset({KeyUsageBit.DIGITAL_SIGNATURE, KeyUsageBit.KEY_ENCIPHERMENT})
    all_sans = {SanType.DNS: SanRule(patterns=(DNS_NAME,)), SanType.IP: SanRule(),
                SanType.URI: SanRule(patterns=(r"(https?|spiffe|urn):[^\s]+",)),
                SanType.EMAIL: SanRule(patterns=(r"[^@\s]+@[^@\s]+",))}
    return (
        Profile(name="tls-server", ca=ca, description="TLS server (serverAuth)", key_types=_ALL_KEYS,
                default_validity=dt.timedelta(days=90), max_validity=dt.timedelta(days=397),
                key_usage=ku_tls, extended_key_usage=(ExtendedKeyUsage.SERVER_AUTH,),
                subject={SubjectAttr.CN: AttributeRule(patterns=(DNS_NAME,)), **_OPTIONAL_ORG},
                san={SanType.DNS: SanRule(patterns=(DNS_NAME,)), SanType.IP: SanRule()},
                require_san=True, copy_cn_to_san=True, crl_url=crl_url, ocsp_url=ocsp_url,
                ca_issuers_url=ca_issuers_url),
        Profile(name="tls-client", ca=ca, description="TLS client (clientAuth)", key_types=_ALL_KEYS,
                default_validity=dt.timedelta(days=90), max_validity=dt.timedelta(days=397),
                key_usage=frozenset({KeyUsageBit.DIGITAL_SIGNATURE}),
                extended_key_usage=(ExtendedKeyUsage.CLIENT_AUTH,),
                subject={SubjectAttr.CN: AttributeRule(required=True, patterns=(PRINTABLE,)), **_OPTIONAL_ORG},
                san=all_sans, crl_url=crl_url, ocsp_url=ocsp_url, ca_issuers_url=ca_issuers_url),
        Profile(name="tls-mutual", ca=ca, description="TLS server and client (ONAP / microservices)",
                key_types=_ALL_KEYS, default_validity=dt.timedelta(days=365), max_validity=dt.timedelta(days=730),
                key_usage=ku_tls,
                extended_key_usage=(ExtendedKeyUsage.SERVER_AUTH, ExtendedKeyUsage.CLIENT_AUTH),
                subject={SubjectAttr.CN: AttributeRule(required=True, patterns=(PRINTABLE,)), **_OPTIONAL_ORG},
                san=all_sans, copy_cn_to_san=True, crl_url=crl_url, ocsp_url=ocsp_url,
                ca_issuers_url=ca_issuers_url),
    )


__all__ = [
    "ANY", "BUILTIN_NAMES", "COUNTRY", "DNS_NAME", "PRINTABLE", "AttributeRule", "ExtendedKeyUsage", "KeyUsageBit",
    "Profile", "SanRule", "SanType", "SubjectAttr", "builtin_profiles",
]
