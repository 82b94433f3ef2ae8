"""CA operations shared by the REST views and the ``csm ca`` CLI: building engine requests from
plain values, the public URLs put into built-in profiles, JSON/CSV renderings. No Flask."""
from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import io
import ipaddress
import logging
import time
from collections.abc import Mapping
from typing import Any

from cryptography import x509

from ca import (
    CaEngine,
    CaRecord,
    CaSettings,
    CertificateRecord,
    CreateIntermediateRequest,
    CreateRootRequest,
    ImportCaRequest,
    InvalidRequest,
    Profile,
    ResponderCredential,
    RevocationReason,
    UsageReport,
)
from hsm.types import KeyType

from ..config import Settings
from ..db import transaction

log = logging.getLogger(__name__)

# Names that would shadow fixed routes under /v1/ca.
RESERVED_CA_NAMES = frozenset({"certificates", "report"})


def public_base(settings: Settings) -> str:
    return (settings.ca_public_url or settings.url).rstrip("/")


def ca_urls(settings: Settings, name: str) -> dict[str, str]:
    """The stable URLs of a CA's revocation information and certificate."""
    base = f"{public_base(settings)}/v1/ca/{name}"
    return {"crl_url": f"{base}/crl.der", "ocsp_url": f"{base}/ocsp", "ca_issuers_url": f"{base}/ca.der"}


def decode_blob(text: str, field: str) -> bytes:
    """PEM text as bytes, or base64 DER decoded."""
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(field, "must be PEM or base64-encoded DER") from None


def parse_serial(text: str) -> int:
    """A serial number in hex (``0x`` prefix and ``:`` separators allowed)."""
    t = text.strip().lower().removeprefix("0x").replace(":", "")
    if not t or len(t) > 42 or any(c not in "0123456789abcdef" for c in t):
        raise InvalidRequest("serial", "a serial number is given in hex")
    return int(t, 16)


_REASONS = {r.to_x509().value.lower(): r for r in RevocationReason}
_REASONS.update({r.name.lower().replace("_", ""): r for r in RevocationReason})


def parse_reason(value: Any) -> RevocationReason:
    """An RFC 5280 reason by code (1), RFC name (keyCompromise) or enum name (KEY_COMPROMISE)."""
    if isinstance(value, bool):
        raise InvalidRequest("reason", "an RFC 5280 reason name or code")
    if isinstance(value, int):
        try:
            return RevocationReason(value)
        except ValueError:
            raise InvalidRequest("reason", "not an RFC 5280 reason code") from None
    if isinstance(value, str):
        r = _REASONS.get(value.strip().lower().replace("_", "").replace("-", ""))
        if r is not None:
            return r
    raise InvalidRequest("reason", "one of " + ", ".join(sorted(x.to_x509().value for x in RevocationReason)))


def parse_san(text: str) -> x509.GeneralName:
    kind, sep, value = text.partition(":")
    k = kind.strip().lower()
    if not sep or not value:
        raise InvalidRequest("sans", "entries look like DNS:name, IP:addr, URI:uri or email:addr")
    if k == "dns":
        return x509.DNSName(value)
    if k == "ip":
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            raise InvalidRequest("sans", "an IP entry must hold an IP address") from None
    if k == "uri":
        return x509.UniformResourceIdentifier(value)
    if k == "email":
        return x509.RFC822Name(value)
    raise InvalidRequest("sans", "entries look like DNS:name, IP:addr, URI:uri or email:addr")


def ca_settings(body: Mapping[str, Any]) -> CaSettings:
    d = CaSettings()
    try:
        return CaSettings(
            crl_validity=dt.timedelta(hours=body["crl_validity_hours"]) if body.get("crl_validity_hours") else d.crl_validity,
            crl_renew_before=(dt.timedelta(hours=body["crl_renew_before_hours"])
                              if body.get("crl_renew_before_hours") is not None else d.crl_renew_before),
            ocsp_validity=(dt.timedelta(minutes=body["ocsp_validity_minutes"])
                           if body.get("ocsp_validity_minutes") else d.ocsp_validity))
    except ValueError as exc:
        raise InvalidRequest("crl_renew_before_hours", str(exc)) from None


def create_ca(engine: CaEngine, settings: Settings, body: Mapping[str, Any], *, requester: str) -> CaRecord:
    """Create a root, an intermediate or import a CA from the fields of ``CaCreateSchema``;
    install the built-in profiles (with this service's CRL/OCSP URLs) unless told not to."""
    name = body["name"]
    if name in RESERVED_CA_NAMES:
        raise InvalidRequest("name", f"{name!r} is reserved")
    kind = body.get("type", "root")
    cs = ca_settings(body)
    key_type = KeyType(body.get("key_type") or "ec-p256")
    validity = dt.timedelta(days=body["validity_days"]) if body.get("validity_days") else None
    if kind in ("root", "intermediate") and not body.get("subject"):
        raise InvalidRequest("subject", "a new CA needs a subject")
    record: CaRecord
    if kind == "root":
        record = engine.create_root(CreateRootRequest(
            name=name, subject=body["subject"], key_type=key_type, path_length=body.get("path_length"),
            settings=cs, requester=requester, **({"validity": validity} if validity else {})))
    elif kind == "intermediate":
        if not body.get("parent"):
            raise InvalidRequest("parent", "an intermediate CA needs a parent CA")
        parent_urls = ca_urls(settings, body["parent"])
        record = engine.create_intermediate(CreateIntermediateRequest(
            name=name, parent=body["parent"], subject=body["subject"], key_type=key_type,
            path_length=body.get("path_length", 0), settings=cs, requester=requester,
            **parent_urls, **({"validity": validity} if validity else {})))
    elif kind == "import":
        if not body.get("certificate") or not body.get("private_key"):
            raise InvalidRequest("private_key", "an import needs certificate and private_key")
        password = body.get("password")
        record = engine.import_ca(ImportCaRequest(
            name=name, certificate=decode_blob(body["certificate"], "certificate"),
            private_key=decode_blob(body["private_key"], "private_key"),
            password=password.encode() if password else None,
            chain=(decode_blob(body["chain"], "chain"),) if body.get("chain") else (),
            parent=body.get("parent"), settings=cs, requester=requester))
    else:
        raise InvalidRequest("type", "root, intermediate or import")
    if body.get("builtin_profiles", True):
        engine.install_builtin_profiles(name, **ca_urls(settings, name))
    return record


# -- renderings ------------------------------------------------------------------------------------------

def iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def ca_json(record: CaRecord, settings: Settings) -> dict[str, Any]:
    cert = record.certificate
    return {
        "name": record.name, "subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}", "key_type": record.key_type.value, "key_label": record.key_label,
        "not_before": iso(cert.not_valid_before_utc), "not_after": iso(cert.not_valid_after_utc),
        "root": record.is_root, "parent": record.parent, "imported": record.imported,
        "created_at": iso(record.created_at),
        "settings": {"crl_validity_hours": record.settings.crl_validity.total_seconds() / 3600,
                     "crl_renew_before_hours": record.settings.crl_renew_before.total_seconds() / 3600,
                     "ocsp_validity_minutes": record.settings.ocsp_validity.total_seconds() / 60},
        "urls": ca_urls(settings, record.name),
    }


def cert_json(r: CertificateRecord, *, now: dt.datetime) -> dict[str, Any]:
    rev = r.revocation
    return {
        "serial": f"{r.serial:x}", "ca": r.ca_name, "profile": r.profile, "requester": r.requester,
        "subject": r.subject, "sans": list(r.sans), "not_before": iso(r.not_before), "not_after": iso(r.not_after),
        "issued_at": iso(r.issued_at), "key_type": r.key_type, "status": r.status(now).value,
        "renewal_of": f"{r.renewal_of:x}" if r.renewal_of is not None else None,
        "server_generated_key": r.server_generated_key, "is_ca": r.is_ca,
        "fingerprint_sha256": r.fingerprint_sha256,
        "revocation": None if rev is None else {
            "reason": rev.reason.to_x509().value, "code": int(rev.reason), "revoked_at": iso(rev.revoked_at),
            "revoked_by": rev.revoked_by, "invalidity_date": iso(rev.invalidity_date)},
    }


def profile_json(p: Profile) -> dict[str, Any]:
    return p.to_dict()


def report_json(report: UsageReport) -> dict[str, Any]:
    return {
        "generated_at": iso(report.generated_at),
        "expiring_within_days": report.expiring_within.total_seconds() / 86400,
        "issuance": [{"ca": c.ca_name, "profile": c.profile, "requester": c.requester, "issued": c.issued,
                      "renewed": c.renewed, "revoked": c.revoked, "expiring": c.expiring} for c in report.issuance],
        "signatures": [{"ca": s.ca_name, "key_label": s.key_label, "kind": s.kind.value, "count": s.count}
                       for s in report.signatures],
        "usage": [{"serial": f"{u.serial:x}", "ca": u.ca_name, "reported_by": u.reported_by, "host": u.host,
                   "in_use": u.in_use, "detail": u.detail, "reported_at": iso(u.reported_at)} for u in report.usage],
    }


REPORT_COLUMNS = ("section", "ca", "profile", "requester", "issued", "renewed", "revoked", "expiring",
                  "key_label", "kind", "count", "serial", "host", "in_use", "detail", "reported_at")


def report_rows(report: UsageReport) -> list[dict[str, Any]]:
    """One flat row per issuance group, signature counter and usage statement."""
    doc = report_json(report)
    rows: list[dict[str, Any]] = [{"section": "issuance", **c} for c in doc["issuance"]]
    rows += [{"section": "signatures", **s} for s in doc["signatures"]]
    rows += [{"section": "usage", **u} for u in doc["usage"]]
    return rows


def report_csv(report: UsageReport) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=REPORT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in report_rows(report):
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


__all__ = [
    "RESERVED_CA_NAMES", "ca_json", "ca_settings", "ca_urls", "cert_json", "create_ca", "decode_blob",
    "parse_reason", "parse_san", "parse_serial", "profile_json", "public_base", "report_csv", "report_json",
    "report_rows",
]


# ---- delegated OCSP responders ---------------------------------------------------------------
def issue_ocsp_responder(svc: Any, ca_name: str, *, validity_days: int, requester: str) -> ResponderCredential:
    """Issue a delegated OCSP responder for ``ca_name`` (key generated in the token) and make it
    the one that signs the CA's OCSP answers; the previous responder's key is destroyed (its
    certificate stays in the inventory until it expires)."""
    from .models import OcspResponderRow
    from .wiring import ca_engine, forget_ocsp_responder

    engine = ca_engine(svc)
    cred = engine.issue_ocsp_responder(ca_name, validity=dt.timedelta(days=validity_days), requester=requester)
    try:
        with transaction(svc.sessions) as s:
            row = s.get(OcspResponderRow, ca_name)
            old = row.key_label if row is not None else None
            if row is None:
                s.add(OcspResponderRow(ca_name=ca_name, key_label=cred.key_label, certificate=cred.certificate_der,
                                       created_at=int(time.time())))
            else:
                row.key_label, row.certificate, row.created_at = cred.key_label, cred.certificate_der, int(time.time())
    except BaseException:
        # Not made the responder: its new key would sign nothing (its certificate stays in the
        # inventory, unused, until it expires).
        _destroy_key(svc, cred.key_label)
        raise
    forget_ocsp_responder(svc, ca_name)
    if old is not None and old != cred.key_label:
        _destroy_key(svc, old)
    return cred


def stored_ocsp_responder(svc: Any, ca_name: str) -> ResponderCredential | None:
    from .models import OcspResponderRow

    with transaction(svc.sessions, write=False) as s:
        row = s.get(OcspResponderRow, ca_name)
        return None if row is None else ResponderCredential(row.ca_name, row.key_label, bytes(row.certificate))


def remove_ocsp_responder(svc: Any, ca_name: str) -> bool:
    """Go back to signing ``ca_name``'s OCSP answers with the CA key; False if it had no responder."""
    from .models import OcspResponderRow
    from .wiring import forget_ocsp_responder

    with transaction(svc.sessions) as s:
        row = s.get(OcspResponderRow, ca_name)
        if row is None:
            return False
        label = row.key_label
        s.delete(row)
    forget_ocsp_responder(svc, ca_name)
    _destroy_key(svc, label)
    return True


def _destroy_key(svc: Any, label: str) -> None:
    import hsm

    try:
        svc.keystore.get().destroy(label)
    except hsm.KeyNotFound:
        pass
    except hsm.HsmError as exc:  # the row is gone either way; the key is only unused
        log.warning("could not destroy the unused OCSP responder key %s: %s", label, type(exc).__name__)
