"""The secrets feature's logic: validation, versions, check-and-set, references, rotation,
import/export. No Flask here: the store, envelope and session factory come in as arguments.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from ..db import transaction
from .envelope import Envelope
from .errors import CasMismatch, DomainExists, DomainNotFound, InvalidValues, ReferenceInvalid, RestoreRefused
from .limits import check_max_versions, check_name, check_values, check_version, encode_values
from .models import ReferenceRow
from .store import (
    DomainRecord,
    SealedSecret,
    SealedVersion,
    SecretMeta,
    SecretStore,
    VersionMeta,
    WrappedKey,
    WriteMode,
)

REF_PREFIX = "csmref."
EXPORT_FORMAT = "csm-secrets-export/1"


@dataclass(frozen=True)
class SecretValue:
    meta: SecretMeta
    version: int
    values: dict[str, Any]


@dataclass(frozen=True)
class Reference:
    reference: str  # shown once
    domain: str
    name: str
    version: int
    expires_at: float


class SecretsService:
    def __init__(self, store: SecretStore, envelope: Envelope, sessions: sessionmaker[Session], *,
                 default_max_versions: int = 10, ref_ttl_default: int = 60, ref_ttl_max: int = 3600,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.envelope = envelope
        self._sessions = sessions
        self.default_max_versions = default_max_versions
        self.ref_ttl_default = ref_ttl_default
        self.ref_ttl_max = ref_ttl_max
        self._clock = clock

    # ---- domains -------------------------------------------------------------------
    def create_domain(self, name: str, *, max_versions: int | None = None) -> DomainRecord:
        check_name(name, kind="domain")
        if max_versions is not None:
            check_max_versions(max_versions)
        # Cheap pre-check so a duplicate does not generate a key in the token.
        try:
            self.store.get_domain(name)
        except DomainNotFound:
            pass
        else:
            raise DomainExists(name)
        dom_id = str(uuid.uuid4())
        now = self._clock()
        key = self.envelope.new_domain_key(dom_id, 1)
        rec = DomainRecord(dom_id, name, now, now, 1, max_versions, (key,))
        try:
            return self.store.create_domain(rec)
        except Exception:
            self.envelope.forget_domain(rec)
            raise

    def get_domain(self, name: str) -> DomainRecord:
        return self.store.get_domain(check_name(name, kind="domain"))

    def list_domains(self) -> list[DomainRecord]:
        return self.store.list_domains()

    def count_secrets(self, name: str) -> int:
        return len(self.store.list_secrets(check_name(name, kind="domain")))

    def delete_domain(self, name: str, *, force: bool = False) -> int:
        rec = self.get_domain(name)
        n = self.store.delete_domain(name, force=force)
        self.envelope.forget_domain(rec)
        return n

    def configure_domain(self, name: str, *, max_versions: int | None) -> DomainRecord:
        if max_versions is not None:
            check_max_versions(max_versions)
        return self.store.set_domain_max_versions(check_name(name, kind="domain"), max_versions)

    def rotate_domain_key(self, name: str) -> DomainRecord:
        """Add domain key version n+1; new writes use it at once, older versions stay readable."""
        rec = self.get_domain(name)
        new = rec.key_version + 1
        key = self.envelope.new_domain_key(rec.id, new)
        return self.store.set_domain_keys(name, [key], new)

    # ---- secrets -------------------------------------------------------------------
    def list_secrets(self, domain: str) -> list[str]:
        return self.store.list_secrets(check_name(domain, kind="domain"))

    def write(self, domain: str, name: str, values: Any, *, mode: WriteMode = WriteMode.UPSERT,
              cas: int | None = None) -> SecretMeta:
        check_name(domain, kind="domain")
        check_name(name)
        plaintext = encode_values(check_values(values))
        if cas is not None and (isinstance(cas, bool) or not isinstance(cas, int) or cas < 0):
            raise InvalidValues("cas must be a non-negative integer")
        def seal(rec: DomainRecord, version: int) -> tuple[int, bytes]:
            return self.envelope.seal(rec, name, version, plaintext, fetch=lambda: self.store.get_domain(domain))

        return self.store.write(domain, name, seal, mode=mode, cas=cas,
                                default_max_versions=self.default_max_versions)

    def patch(self, domain: str, name: str, changes: Any, *, cas: int | None = None) -> SecretMeta:
        """JSON merge patch of the latest version: keys with null are removed. Retries lost races
        unless the caller named the version it expects (then a race is a conflict)."""
        check_values(changes, allow_null=True)
        for attempt in range(5):
            cur = self.read(domain, name)
            if cas is not None and cas != cur.meta.current_version:
                raise CasMismatch(name, cas, cur.meta.current_version)
            merged = dict(cur.values)
            for k, v in changes.items():
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
            try:
                return self.write(domain, name, merged, mode=WriteMode.UPDATE, cas=cur.meta.current_version)
            except CasMismatch:
                if cas is not None or attempt == 4:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def read(self, domain: str, name: str, version: int | None = None) -> SecretValue:
        meta, v, pt = self.read_plaintext(domain, name, version)
        return SecretValue(meta, v, json.loads(pt.decode()))

    def read_plaintext(self, domain: str, name: str, version: int | None = None) -> tuple[SecretMeta, int, bytes]:
        """Like :meth:`read`, with the values as stored: the compact JSON of
        :func:`~.limits.encode_values` (sorted keys, UTF-8)."""
        check_name(domain, kind="domain")
        check_name(name)
        if version is not None:
            version = check_version(version)
        rec, meta, sealed = self.store.read(domain, name, version)
        assert sealed.ciphertext is not None
        pt = self.envelope.open(rec, name, sealed.meta.version, sealed.ciphertext,
                                fetch=lambda: self.store.get_domain(domain))
        return meta, sealed.meta.version, pt

    def metadata(self, domain: str, name: str) -> SecretMeta:
        return self.store.metadata(check_name(domain, kind="domain"), check_name(name))

    def configure_secret(self, domain: str, name: str, *, max_versions: int | None) -> SecretMeta:
        if max_versions is not None:
            check_max_versions(max_versions)
        return self.store.set_max_versions(check_name(domain, kind="domain"), check_name(name), max_versions,
                                           self.default_max_versions)

    def _versions(self, versions: Any, *, required: bool) -> list[int] | None:
        if versions is None:
            if required:
                raise InvalidValues("versions must be a non-empty list of version numbers")
            return None
        if not isinstance(versions, list) or not versions or len(versions) > 100:
            raise InvalidValues("versions must be a list of 1-100 version numbers")
        return [check_version(v, "versions[]") for v in versions]

    def delete(self, domain: str, name: str, versions: Any = None) -> SecretMeta:
        """Soft delete the latest version (or the given ones); undelete brings them back."""
        return self.store.delete_versions(check_name(domain, kind="domain"), check_name(name),
                                          self._versions(versions, required=False))

    def undelete(self, domain: str, name: str, versions: Any) -> SecretMeta:
        return self.store.undelete_versions(check_name(domain, kind="domain"), check_name(name),
                                            self._versions(versions, required=True) or [])

    def destroy(self, domain: str, name: str, versions: Any) -> SecretMeta:
        """Erase the ciphertexts of the given versions for good (metadata remains)."""
        return self.store.destroy_versions(check_name(domain, kind="domain"), check_name(name),
                                           self._versions(versions, required=True) or [])

    def purge(self, domain: str, name: str) -> None:
        """Remove a secret with all its versions and metadata."""
        self.store.purge(check_name(domain, kind="domain"), check_name(name))

    # ---- one-time references -------------------------------------------------------
    def mint_reference(self, domain: str, name: str, *, version: int | None = None, ttl: int | None = None,
                       created_by: str = "") -> Reference:
        ttl = self.ref_ttl_default if ttl is None else ttl
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= self.ref_ttl_max:
            raise InvalidValues(f"ttl must be between 1 and {self.ref_ttl_max} seconds")
        current = self.read(domain, name, version)  # the version must be readable now
        ref = REF_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        now = self._clock()
        with transaction(self._sessions) as s:
            s.execute(delete(ReferenceRow).where(ReferenceRow.expires_at <= now))
            s.add(ReferenceRow(ref_hash=_ref_hash(ref), domain=domain, name=name, version=current.version,
                               expires_at=now + ttl, created_by=created_by[:256]))
        return Reference(ref, domain, name, current.version, now + ttl)

    def redeem_reference(self, reference: Any) -> SecretValue:
        """Fetch the referenced secret exactly once; the reference is gone afterwards."""
        if not isinstance(reference, str) or not reference.startswith(REF_PREFIX) or len(reference) > 128:
            raise ReferenceInvalid()
        digest = _ref_hash(reference)
        with transaction(self._sessions) as s:
            row = s.get(ReferenceRow, digest)
            if row is None or not hmac.compare_digest(row.ref_hash, digest):
                raise ReferenceInvalid()
            domain, name, version, expires = row.domain, row.name, row.version, row.expires_at
            gone = s.execute(delete(ReferenceRow).where(ReferenceRow.ref_hash == digest)).rowcount
        if gone != 1 or expires <= self._clock():
            raise ReferenceInvalid()
        return self.read(domain, name, version)

    # ---- rotation ------------------------------------------------------------------
    def rotate_master_key(self) -> dict[str, int]:
        """New master key version; every domain key is rewrapped under it (online)."""
        new = self.envelope.rotate_kek()
        n = self._rewrap_domain_keys(new)
        return {"master_key_version": new, "domain_keys_rewrapped": n}

    def _rewrap_domain_keys(self, kek: int) -> int:
        n = 0
        for rec in self.store.list_domains():
            stale = [k for k in rec.keys if k.kek_version != kek]
            if stale:
                new = [self.envelope.rewrap_domain_key(rec, k, kek) for k in stale]
                self.store.set_domain_keys(rec.name, new, rec.key_version)
                n += len(new)
        return n

    def rewrap(self) -> dict[str, int]:
        """Bring everything under the newest keys: domain keys under the newest master key,
        every kept version under its domain's newest data key. Online and idempotent."""
        kek = self.envelope.current_kek()
        keys = self._rewrap_domain_keys(kek)
        values = 0
        for rec in self.store.list_domains():
            def reseal(name: str, version: int, key_version: int, blob: bytes,
                       rec: DomainRecord = rec) -> tuple[int, bytes] | None:
                if key_version == rec.key_version:
                    return None
                pt = self.envelope.open(rec, name, version, blob)
                return self.envelope.seal(rec, name, version, pt)

            values += self.store.reseal(rec.name, reseal)
        return {"master_key_version": kek, "domain_keys_rewrapped": keys, "versions_resealed": values}

    # ---- export / restore ------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        """Everything needed to restore, still sealed (wrapped domain keys, ciphertexts), with a
        GMAC made in the token under the current master key: only a deployment whose token holds
        the same master key can verify it and unwrap the domain keys."""
        kek = self.envelope.current_kek()
        domains = []
        for rec in self.store.list_domains():
            domains.append({
                "id": rec.id, "name": rec.name, "created_at": rec.created_at, "updated_at": rec.updated_at,
                "key_version": rec.key_version, "max_versions": rec.max_versions,
                "keys": [{"version": k.version, "kek_version": k.kek_version, "wrapped": _b64(k.wrapped),
                          "created_at": k.created_at} for k in rec.keys],
                "secrets": [_secret_doc(sec) for sec in self.store.export_domain(rec.name)],
            })
        body = {"format": EXPORT_FORMAT, "created_at": self._clock(), "domains": domains}
        tag = self.envelope.mac(kek, _digest(body))
        return {**body, "mac": {"kek_version": kek, "tag": _b64(tag)}}

    def restore(self, doc: Any) -> dict[str, int]:
        """Restore an export made by a deployment holding the same master key(s). Existing domains
        (same id) gain the secrets they lack; existing secrets are left alone. Idempotent."""
        if not isinstance(doc, Mapping) or doc.get("format") != EXPORT_FORMAT or not isinstance(doc.get("mac"), Mapping):
            raise RestoreRefused(f"not a {EXPORT_FORMAT} document")
        body = {k: v for k, v in doc.items() if k != "mac"}
        try:
            mac = doc["mac"]
            ok = self.envelope.verify_mac(int(mac["kek_version"]), _digest(body), _unb64(mac["tag"]))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise RestoreRefused("the export's MAC does not verify: it was altered, or this deployment "
                                 "does not hold the master key it was made with")
        counts = {"domains_created": 0, "secrets_restored": 0, "secrets_skipped": 0}
        try:
            for d in body["domains"]:
                rec = DomainRecord(
                    str(d["id"]), check_name(d["name"], kind="domain"), float(d["created_at"]),
                    float(d["updated_at"]), int(d["key_version"]), d["max_versions"],
                    tuple(WrappedKey(int(k["version"]), int(k["kek_version"]), _unb64(k["wrapped"]),
                                     float(k["created_at"])) for k in d["keys"]),
                )
                for k in rec.keys:  # proves the keys unwrap here before anything is stored
                    self.envelope.load(rec, k.version, k)
                try:
                    existing = self.store.get_domain(rec.name)
                except DomainNotFound:
                    existing = self.store.create_domain(rec)
                    counts["domains_created"] += 1
                if existing.id != rec.id:
                    raise RestoreRefused(f"domain {rec.name!r} exists here with a different identity")
                for sdoc in d["secrets"]:
                    if self.store.import_secret(rec.name, _secret_from_doc(rec.name, sdoc)):
                        counts["secrets_restored"] += 1
                    else:
                        counts["secrets_skipped"] += 1
        except (KeyError, TypeError, ValueError) as exc:
            raise RestoreRefused(f"malformed export document ({type(exc).__name__})") from None
        return counts

    # ---- health --------------------------------------------------------------------
    def probe(self) -> None:
        self.store.ping()
        self.envelope.current_kek(create=True)


def _ref_hash(ref: str) -> str:
    return hashlib.sha256(ref.encode()).hexdigest()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: Any) -> bytes:
    if not isinstance(s, str):
        raise TypeError("expected base64 text")
    return base64.b64decode(s.encode(), validate=True)


def _digest(body: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).digest()


def _secret_doc(sec: SealedSecret) -> dict[str, Any]:
    m = sec.meta
    return {
        "name": m.name, "created_at": m.created_at, "updated_at": m.updated_at,
        "current_version": m.current_version, "max_versions": m.max_versions,
        "versions": [{"version": v.meta.version, "created_at": v.meta.created_at, "deleted_at": v.meta.deleted_at,
                      "destroyed": v.meta.destroyed, "key_version": v.key_version,
                      "ciphertext": _b64(v.ciphertext) if v.ciphertext is not None else None}
                     for v in sec.versions],
    }


def _secret_from_doc(domain: str, d: Mapping[str, Any]) -> SealedSecret:
    versions = []
    for v in d["versions"]:
        vm = VersionMeta(int(v["version"]), float(v["created_at"]),
                         None if v["deleted_at"] is None else float(v["deleted_at"]), bool(v["destroyed"]))
        ct = None if v["ciphertext"] is None else _unb64(v["ciphertext"])
        versions.append(SealedVersion(vm, int(v["key_version"]), ct))
    meta = SecretMeta(domain, check_name(d["name"]), float(d["created_at"]), float(d["updated_at"]),
                      int(d["current_version"]), d["max_versions"], tuple(v.meta for v in versions))
    return SealedSecret(meta, tuple(versions))
