"""In-memory implementation of :class:`~ca.repository.CaRepository` and
:class:`~ca.repository.CertificateRepository` in one thread-safe object.

A real, complete implementation of the Protocols (for embedding the engine in a process that
needs no database, and for the tests); nothing survives the process. Search is a linear scan.
"""
from __future__ import annotations

import datetime as dt
import threading
from collections import defaultdict

from .errors import CaExists, CaNotFound, ConcurrentUpdate, DuplicateSerial, ProfileNotFound, UnknownSerial
from .profiles import Profile
from .types import (
    CaRecord,
    CertificateQuery,
    CertificateRecord,
    CertStatus,
    CrlRecord,
    IssuanceCount,
    Revocation,
    SignatureCount,
    SignatureKind,
    UsageRecord,
    utcnow,
)


class MemoryRepository:
    """Both repositories of the CA engine, in memory."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._cas: dict[str, CaRecord] = {}
        self._profiles: dict[tuple[str, str], Profile] = {}
        self._crl_numbers: dict[str, int] = defaultdict(int)
        self._crls: dict[str, CrlRecord] = {}
        self._certs: dict[int, CertificateRecord] = {}
        self._epochs: dict[str, int] = defaultdict(int)
        self._usage: dict[tuple[int, str], UsageRecord] = {}
        self._signatures: dict[tuple[str, str, SignatureKind], int] = defaultdict(int)

    # -- CaRepository -------------------------------------------------------------------------------
    def add_ca(self, record: CaRecord) -> None:
        with self._lock:
            if record.name in self._cas:
                raise CaExists(record.name)
            self._cas[record.name] = record

    def get_ca(self, name: str) -> CaRecord:
        with self._lock:
            try:
                return self._cas[name]
            except KeyError:
                raise CaNotFound(name) from None

    def list_cas(self) -> list[CaRecord]:
        with self._lock:
            return [self._cas[n] for n in sorted(self._cas)]

    def put_profile(self, profile: Profile) -> None:
        with self._lock:
            # stored in serialised form, as the SQL implementation will
            self._profiles[(profile.ca, profile.name)] = Profile.from_dict(profile.to_dict())

    def get_profile(self, ca_name: str, name: str) -> Profile:
        with self._lock:
            try:
                return self._profiles[(ca_name, name)]
            except KeyError:
                raise ProfileNotFound(ca_name, name) from None

    def list_profiles(self, ca_name: str | None = None) -> list[Profile]:
        with self._lock:
            return [p for k, p in sorted(self._profiles.items()) if ca_name is None or k[0] == ca_name]

    def delete_profile(self, ca_name: str, name: str) -> None:
        with self._lock:
            if self._profiles.pop((ca_name, name), None) is None:
                raise ProfileNotFound(ca_name, name)

    def next_crl_number(self, ca_name: str) -> int:
        with self._lock:
            self._crl_numbers[ca_name] += 1
            return self._crl_numbers[ca_name]

    def save_crl(self, crl: CrlRecord) -> None:
        with self._lock:
            current = self._crls.get(crl.ca_name)
            if current is None or crl.number > current.number:
                self._crls[crl.ca_name] = crl

    def latest_crl(self, ca_name: str) -> CrlRecord | None:
        with self._lock:
            return self._crls.get(ca_name)

    # -- CertificateRepository -------------------------------------------------------------------------
    def add(self, record: CertificateRecord) -> None:
        with self._lock:
            if record.serial in self._certs:
                raise DuplicateSerial(record.serial)
            self._certs[record.serial] = record

    def get(self, serial: int) -> CertificateRecord:
        with self._lock:
            try:
                return self._certs[serial]
            except KeyError:
                raise UnknownSerial(serial) from None

    def search(self, query: CertificateQuery) -> list[CertificateRecord]:
        q = query
        at = q.as_of or utcnow()
        subject = q.subject_contains.lower() if q.subject_contains else None
        san = q.san_contains.lower() if q.san_contains else None
        with self._lock:
            records = list(self._certs.values())
        out = []
        for r in records:
            if q.ca_name is not None and r.ca_name != q.ca_name:
                continue
            if q.serial is not None and r.serial != q.serial:
                continue
            if q.profile is not None and r.profile != q.profile:
                continue
            if q.requester is not None and r.requester != q.requester:
                continue
            if subject is not None and subject not in r.subject.lower():
                continue
            if san is not None and not any(san in s.lower() for s in r.sans):
                continue
            if q.status is not None and r.status(at) is not q.status:
                continue
            if q.expires_after is not None and r.not_after < q.expires_after:
                continue
            if q.expires_before is not None and r.not_after >= q.expires_before:
                continue
            out.append(r)
        out.sort(key=lambda r: (r.issued_at, r.serial), reverse=True)
        return out[q.offset:q.offset + q.limit]

    def set_revocation(self, serial: int, revocation: Revocation | None, *,
                       expected: Revocation | None) -> CertificateRecord:
        from dataclasses import replace

        with self._lock:
            current = self.get(serial)
            if current.revocation != expected:
                raise ConcurrentUpdate(serial)
            updated = replace(current, revocation=revocation)
            self._certs[serial] = updated
            self._epochs[updated.ca_name] += 1
            return updated

    def list_revoked(self, ca_name: str, *, not_expired_at: dt.datetime) -> list[CertificateRecord]:
        with self._lock:
            return sorted((r for r in self._certs.values()
                           if r.ca_name == ca_name and r.revocation is not None and r.not_after >= not_expired_at),
                          key=lambda r: r.serial)

    def revocation_epoch(self, ca_name: str) -> int:
        with self._lock:
            return self._epochs[ca_name]

    def add_usage(self, usage: UsageRecord) -> None:
        with self._lock:
            self._usage[(usage.serial, usage.host)] = usage

    def list_usage(self, *, ca_name: str | None = None, serial: int | None = None,
                   limit: int = 1000) -> list[UsageRecord]:
        with self._lock:
            rows = [u for u in self._usage.values()
                    if (ca_name is None or u.ca_name == ca_name) and (serial is None or u.serial == serial)]
        rows.sort(key=lambda u: (u.reported_at, u.serial, u.host), reverse=True)
        return rows[:limit]

    def count_signature(self, ca_name: str, key_label: str, kind: SignatureKind, n: int = 1) -> None:
        with self._lock:
            self._signatures[(ca_name, key_label, kind)] += n

    def signature_counts(self, ca_name: str | None = None) -> list[SignatureCount]:
        with self._lock:
            items = sorted(self._signatures.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2].value))
        return [SignatureCount(ca, label, kind, n) for (ca, label, kind), n in items
                if n and (ca_name is None or ca == ca_name)]

    def issuance_counts(self, *, ca_name: str | None, now: dt.datetime,
                        expiring_within: dt.timedelta) -> list[IssuanceCount]:
        groups: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        horizon = now + expiring_within
        with self._lock:
            records = list(self._certs.values())
        for r in records:
            if ca_name is not None and r.ca_name != ca_name:
                continue
            g = groups[(r.ca_name, r.profile, r.requester)]
            g[0] += 1
            g[1] += r.renewal_of is not None
            g[2] += r.revocation is not None
            g[3] += r.status(now) is CertStatus.ACTIVE and r.not_after < horizon
        return [IssuanceCount(ca, profile, requester, *counts)
                for (ca, profile, requester), counts in sorted(groups.items())]


__all__ = ["MemoryRepository"]
