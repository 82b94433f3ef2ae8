"""Client-certificate identities: a verified TLS client certificate mapped to policies by rules.

gunicorn (``csm serve --server gunicorn --tls-client-ca bundle.pem``) verifies the chain
against the trust anchors during the handshake and exposes the peer certificate as
``environ["gunicorn.socket"].getpeercert()``; nothing a client sends in headers is trusted.

Rules file (``client_cert_rules``), JSON::

    {"rules": [
      {"match": {"cn": "billing-*", "dns": "*.billing.svc"}, "policies": ["billing-read"]},
      {"match": {"subject": "CN=ops,O=Example"}, "policies": ["ops"]}
    ]}

Matchers (shell-style globs, all given ones must match): ``subject`` (RFC 4514 style, most
significant RDN last as printed by ``openssl x509 -subject -nameopt RFC2253``), ``cn``,
``o``, ``ou``, ``dns``, ``uri``, ``email``, ``ip`` (any SAN of that type). The policies of
every matching rule are united; a certificate that matches no rule is unauthenticated.
"""
from __future__ import annotations

import fnmatch
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..auth.service import Identity
from ..errors import ConfigError

_MATCHERS = {"subject", "cn", "o", "ou", "dns", "uri", "email", "ip"}
_OID_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
              "localityName": "L", "stateOrProvinceName": "ST", "emailAddress": "emailAddress",
              "domainComponent": "DC", "serialNumber": "serialNumber"}
_SAN_KIND = {"DNS": "dns", "URI": "uri", "email": "email", "IP Address": "ip"}


@dataclass(frozen=True)
class CertRule:
    match: Mapping[str, str]
    policies: tuple[str, ...]


@dataclass(frozen=True)
class PeerCert:
    subject: str
    attrs: Mapping[str, tuple[str, ...]]  # cn/o/ou and SAN kinds -> values

    @classmethod
    def from_getpeercert(cls, cert: Mapping[str, Any]) -> PeerCert:
        rdns: list[str] = []
        attrs: dict[str, list[str]] = {}
        for rdn in cert.get("subject", ()):
            for name, value in rdn:
                short = _OID_SHORT.get(name, name)
                rdns.append(f"{short}={value}")
                attrs.setdefault(short.lower(), []).append(str(value))
        for kind, value in cert.get("subjectAltName", ()):
            if kind in _SAN_KIND:
                attrs.setdefault(_SAN_KIND[kind], []).append(str(value))
        return cls(",".join(reversed(rdns)), {k: tuple(v) for k, v in attrs.items()})

    def matches(self, rule: CertRule) -> bool:
        for key, pattern in rule.match.items():
            values = (self.subject,) if key == "subject" else self.attrs.get(key, ())
            if not any(fnmatch.fnmatchcase(v, pattern) for v in values):
                return False
        return True


def parse_rules(doc: Any, source: str = "client_cert_rules") -> list[CertRule]:
    rules = doc.get("rules") if isinstance(doc, Mapping) else doc
    if not isinstance(rules, list):
        raise ConfigError(f"{source}: expected {{\"rules\": [...]}}")
    out = []
    for i, r in enumerate(rules):
        if not isinstance(r, Mapping) or set(r) - {"match", "policies", "comment"}:
            raise ConfigError(f"{source}: rules[{i}] must have 'match' and 'policies'")
        match, pols = r.get("match"), r.get("policies")
        if not isinstance(match, Mapping) or not match or set(match) - _MATCHERS \
                or not all(isinstance(v, str) and v for v in match.values()):
            raise ConfigError(f"{source}: rules[{i}].match must map some of {sorted(_MATCHERS)} to glob strings")
        if not isinstance(pols, list) or not pols or not all(isinstance(p, str) for p in pols):
            raise ConfigError(f"{source}: rules[{i}].policies must be a non-empty list of policy names")
        out.append(CertRule(dict(match), tuple(pols)))
    return out


def load_rules(path: str) -> list[CertRule]:
    try:
        return parse_rules(json.loads(Path(path).read_text()), path)
    except OSError:
        raise ConfigError(f"client_cert_rules: cannot read {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"client_cert_rules: {path} is not valid JSON ({exc.msg})") from None


class PolicyCache:
    """Policies by name, re-read at most every ``ttl`` seconds (policy edits apply within it)."""

    def __init__(self, load: Callable[[Sequence[str]], tuple[Any, ...]], ttl: float = 5.0) -> None:
        self._load, self._ttl = load, ttl
        self._cache: dict[tuple[str, ...], tuple[float, tuple[Any, ...]]] = {}
        self._lock = threading.Lock()

    def get(self, names: Sequence[str]) -> tuple[Any, ...]:
        key = tuple(sorted(set(names)))
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit and now - hit[0] < self._ttl:
            return hit[1]
        pols = self._load(key)
        with self._lock:
            self._cache[key] = (now, pols)
        return pols


def identity_for(cert: Mapping[str, Any], rules: Sequence[CertRule], policies: PolicyCache) -> Identity | None:
    if not cert:
        return None
    peer = PeerCert.from_getpeercert(cert)
    names: list[str] = []
    for rule in rules:
        if peer.matches(rule):
            names.extend(rule.policies)
    if not names:
        return None
    return Identity("cert", peer.subject[:200] or "(empty subject)", policies.get(names))


def peer_certificate(environ: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The verified client certificate of this connection (gunicorn), or None."""
    sock = environ.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        cert = getpeercert()
    except (ValueError, OSError):
        return None
    return cert or None
