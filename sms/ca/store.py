"""SQL implementations of the CA engine's repositories (:mod:`ca.repository`) over SQLAlchemy 2:
SQLite embedded, PostgreSQL for several instances sharing one database.

* Every method is one transaction (:func:`sms.db.transaction`); on SQLite writers start with
  ``BEGIN IMMEDIATE`` so they queue on the database lock.
* Serial numbers: 40 hex digits, zero-padded, under a UNIQUE constraint — an insert that hits
  it raises :class:`~ca.errors.DuplicateSerial` and the engine retries with a fresh serial.
* CRL numbers: ``UPDATE ... SET crl_number = crl_number + 1 RETURNING crl_number``, atomic
  across processes; the latest CRL is kept with an upsert that never lowers the number.
* Revocation is a compare-and-set on the revocation columns (``IS NOT DISTINCT FROM``) that
  bumps the CA's revocation epoch in the same transaction.
* Signature counters are summed in memory and written as one upsert per counter: on the issuing
  path inside the new certificate's own transaction once half of ``counter_flush_seconds`` has
  passed since the last write; otherwise (CRLs, OCSP, CMP protection) in a transaction of their
  own once the whole interval has passed; and before every read and at
  :meth:`SqlCaStore.close`. So the hot signing path pays no write transaction of its own for
  them. A crash loses at most that interval's counts of this process.
* New certificates are inserted through the service's shared :class:`sms.db.Writer`: on SQLite
  the rows of concurrent requests share one transaction — and one fsync — with each other and
  with the audit entries of the same moment, each row in its own SAVEPOINT, so a taken serial
  fails only its own insert (DuplicateSerial).
* CA records and profiles are cached per process for ``cache_seconds`` (default 2 s; writes
  through this store invalidate at once): a profile change made by another process applies
  there within that time.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Select, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ca.errors import CaExists, CaNotFound, ConcurrentUpdate, DuplicateSerial, ProfileNotFound, UnknownSerial
from ca.profiles import Profile
from ca.types import (
    CaRecord,
    CaSettings,
    CertificateQuery,
    CertificateRecord,
    CertStatus,
    CrlRecord,
    IssuanceCount,
    Revocation,
    RevocationReason,
    SignatureCount,
    SignatureKind,
    UsageRecord,
)

from ..db import RawTx, raw_transaction, transaction, writer
from .models import CaRow, CertificateRow, CrlRow, ProfileRow, SignatureCountRow, UsageRow

T = TypeVar("T")
UTC = dt.timezone.utc
_RETRIES = 5


def serial_key(serial: int) -> str:
    """The stored form of a serial number (40 hex digits: numeric order = string order)."""
    if not isinstance(serial, int) or not 0 <= serial < 1 << 160:
        raise ValueError("serial numbers are 0..2**160-1")
    return f"{serial:040x}"


def _ts(value: dt.datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return int(value.timestamp())


def _opt_ts(value: dt.datetime | None) -> int | None:
    return None if value is None else _ts(value)


def _dt(value: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(value), UTC)


def _opt_dt(value: int | None) -> dt.datetime | None:
    return None if value is None else _dt(value)


def _like(text: str) -> str:
    """A LIKE pattern for a case-insensitive substring (escape character ``\\``)."""
    return "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _settings_json(s: CaSettings) -> str:
    return json.dumps({"crl_validity": int(s.crl_validity.total_seconds()),
                       "crl_renew_before": int(s.crl_renew_before.total_seconds()),
                       "ocsp_validity": int(s.ocsp_validity.total_seconds())})


def _settings(raw: str) -> CaSettings:
    d = json.loads(raw)
    return CaSettings(crl_validity=dt.timedelta(seconds=d["crl_validity"]),
                      crl_renew_before=dt.timedelta(seconds=d["crl_renew_before"]),
                      ocsp_validity=dt.timedelta(seconds=d["ocsp_validity"]))


def _ca_record(row: CaRow) -> CaRecord:
    return CaRecord(name=row.name, key_label=row.key_label, certificate_der=bytes(row.certificate),
                    created_at=_dt(row.created_at),
                    chain_der=tuple(base64.b64decode(c) for c in json.loads(row.chain)),
                    parent=row.parent, imported=bool(row.imported), settings=_settings(row.settings))


def _cert_record(row: CertificateRow) -> CertificateRecord:
    revocation = None
    if row.revoked_at is not None:
        revocation = Revocation(reason=RevocationReason(row.revoked_reason or 0), revoked_at=_dt(row.revoked_at),
                                revoked_by=row.revoked_by or "", invalidity_date=_opt_dt(row.invalidity_date))
    return CertificateRecord(
        serial=int(row.serial, 16), ca_name=row.ca_name, profile=row.profile, requester=row.requester,
        subject=row.subject, sans=tuple(row.sans.split("\n")) if row.sans else (),
        not_before=_dt(row.not_before), not_after=_dt(row.not_after), issued_at=_dt(row.issued_at),
        key_type=row.key_type, der=bytes(row.der),
        renewal_of=int(row.renewal_of, 16) if row.renewal_of is not None else None,
        server_generated_key=bool(row.server_generated_key), is_ca=bool(row.is_ca), revocation=revocation)


_CERT_COLUMNS = ("serial", "ca_name", "profile", "requester", "subject", "sans", "not_before", "not_after",
                 "issued_at", "key_type", "der", "renewal_of", "server_generated_key", "is_ca", "revoked_reason",
                 "revoked_at", "revoked_by", "invalidity_date")
_INSERT_CERT = (f"INSERT INTO ca_certificates ({', '.join(_CERT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_CERT_COLUMNS))})")


class _Inserted:
    """The result of a certificate insert: the audit entry committed with it (a request's
    :func:`sms.db.attach`-ed work) records the serial and profile."""

    __slots__ = ("profile", "serial")

    def __init__(self, serial: int, profile: str) -> None:
        self.serial = serial
        self.profile = profile

    def audit_detail(self) -> dict[str, str]:
        return {"serial": f"{self.serial:x}", "profile": self.profile}


_UPSERT_COUNT = ("INSERT INTO ca_signature_counts (ca_name, key_label, kind, count) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (ca_name, key_label, kind) DO UPDATE SET count = ca_signature_counts.count + excluded.count")


def _upsert_counts(tx: RawTx, counts: dict[tuple[str, str, str], int]) -> None:
    for (ca_name, label, kind), n in sorted(counts.items()):  # one order everywhere: no deadlocks on PostgreSQL
        tx.execute(_UPSERT_COUNT, (ca_name, label, kind, n))


def _revocation_columns(rev: Revocation | None) -> dict[str, Any]:
    if rev is None:
        return {"revoked_reason": None, "revoked_at": None, "revoked_by": None, "invalidity_date": None}
    return {"revoked_reason": int(rev.reason), "revoked_at": _ts(rev.revoked_at), "revoked_by": rev.revoked_by,
            "invalidity_date": _opt_ts(rev.invalidity_date)}


class SqlCaStore:
    """Both repositories of the CA engine (:class:`ca.repository.CaRepository` and
    :class:`ca.repository.CertificateRepository`) in one object over one session factory."""

    def __init__(self, sessions: sessionmaker[Session], *, counter_flush_seconds: float = 1.0,
                 cache_seconds: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions = sessions
        self._cache_seconds = cache_seconds
        self._cache: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._flush_every = counter_flush_seconds
        self._clock = clock
        self._pending: dict[tuple[str, str, str], int] = defaultdict(int)
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._last_flush = clock()
        self._taken_after = self._last_flush  # the last flush before the counts last taken

    # -- helpers ------------------------------------------------------------------------------------
    def _dialect(self, s: Session) -> str:
        return s.get_bind().dialect.name

    def _insert(self, s: Session, table: Any) -> Any:
        return (postgresql.insert(table) if self._dialect(s) == "postgresql" else sqlite.insert(table))

    def _retry(self, fn: Callable[[], T]) -> T:
        """Re-run a unit that lost a race on the database (PG serialisation, SQLite busy)."""
        for attempt in range(_RETRIES):
            try:
                return fn()
            except OperationalError:
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _cached(self, key: tuple[str, ...], load: Callable[[], T]) -> T:
        hit = self._cache.get(key)
        now = self._clock()
        if hit is not None and hit[0] > now:
            value: T = hit[1]
            return value
        value = load()
        self._cache[key] = (now + self._cache_seconds, value)
        return value

    def _invalidate(self) -> None:
        self._cache.clear()

    # -- CaRepository -------------------------------------------------------------------------------
    def add_ca(self, record: CaRecord) -> None:
        self._invalidate()
        try:
            with transaction(self._sessions) as s:
                if s.get(CaRow, record.name) is not None:
                    raise CaExists(record.name)
                s.add(CaRow(name=record.name, key_label=record.key_label, certificate=record.certificate_der,
                            chain=json.dumps([base64.b64encode(c).decode() for c in record.chain_der]),
                            parent=record.parent, imported=record.imported,
                            settings=_settings_json(record.settings), created_at=_ts(record.created_at),
                            crl_number=0, revocation_epoch=0))
        except IntegrityError:
            raise CaExists(record.name) from None

    def get_ca(self, name: str) -> CaRecord:
        return self._cached(("ca", name), lambda: self._load_ca(name))

    def _load_ca(self, name: str) -> CaRecord:
        with transaction(self._sessions, write=False) as s:
            row = s.get(CaRow, name)
            if row is None:
                raise CaNotFound(name)
            return _ca_record(row)

    def list_cas(self) -> list[CaRecord]:
        with transaction(self._sessions, write=False) as s:
            return [_ca_record(r) for r in s.scalars(select(CaRow).order_by(CaRow.name))]

    def put_profile(self, profile: Profile) -> None:
        definition = json.dumps(profile.to_dict(), sort_keys=True)
        self._invalidate()

        def unit() -> None:
            with transaction(self._sessions) as s:
                stmt = self._insert(s, ProfileRow).values(ca_name=profile.ca, name=profile.name, definition=definition)
                s.execute(stmt.on_conflict_do_update(index_elements=["ca_name", "name"],
                                                     set_={"definition": definition}))

        self._retry(unit)
        self._invalidate()

    def get_profile(self, ca_name: str, name: str) -> Profile:
        return self._cached(("profile", ca_name, name), lambda: self._load_profile(ca_name, name))

    def _load_profile(self, ca_name: str, name: str) -> Profile:
        with transaction(self._sessions, write=False) as s:
            row = s.get(ProfileRow, (ca_name, name))
            if row is None:
                raise ProfileNotFound(ca_name, name)
            return Profile.from_dict(json.loads(row.definition))

    def list_profiles(self, ca_name: str | None = None) -> list[Profile]:
        stmt = select(ProfileRow).order_by(ProfileRow.ca_name, ProfileRow.name)
        if ca_name is not None:
            stmt = stmt.where(ProfileRow.ca_name == ca_name)
        with transaction(self._sessions, write=False) as s:
            return [Profile.from_dict(json.loads(r.definition)) for r in s.scalars(stmt)]

    def delete_profile(self, ca_name: str, name: str) -> None:
        self._invalidate()
        with transaction(self._sessions) as s:
            row = s.get(ProfileRow, (ca_name, name))
            if row is None:
                raise ProfileNotFound(ca_name, name)
            s.delete(row)
        self._invalidate()

    def next_crl_number(self, ca_name: str) -> int:
        def unit() -> int:
            with transaction(self._sessions) as s:
                n = s.scalar(update(CaRow).where(CaRow.name == ca_name)
                             .values(crl_number=CaRow.crl_number + 1).returning(CaRow.crl_number))
                if n is None:
                    raise CaNotFound(ca_name)
                return int(n)

        return self._retry(unit)

    def save_crl(self, crl: CrlRecord) -> None:
        values = {"ca_name": crl.ca_name, "number": crl.number, "this_update": _ts(crl.this_update),
                  "next_update": _ts(crl.next_update), "der": crl.der, "revocation_epoch": crl.revocation_epoch}

        def unit() -> None:
            with transaction(self._sessions) as s:
                stmt = self._insert(s, CrlRow).values(**values)
                s.execute(stmt.on_conflict_do_update(
                    index_elements=["ca_name"], set_={k: v for k, v in values.items() if k != "ca_name"},
                    where=CrlRow.number < stmt.excluded.number))

        self._retry(unit)

    def latest_crl(self, ca_name: str) -> CrlRecord | None:
        with transaction(self._sessions, write=False) as s:
            row = s.get(CrlRow, ca_name)
            if row is None:
                return None
            return CrlRecord(ca_name=row.ca_name, number=int(row.number), this_update=_dt(row.this_update),
                             next_update=_dt(row.next_update), der=bytes(row.der),
                             revocation_epoch=int(row.revocation_epoch))

    # -- CertificateRepository ----------------------------------------------------------------------
    def add(self, record: CertificateRecord) -> None:
        r = record
        row = (serial_key(r.serial), r.ca_name, r.profile, r.requester, r.subject, "\n".join(r.sans),
               _ts(r.not_before), _ts(r.not_after), _ts(r.issued_at), r.key_type, r.der,
               serial_key(r.renewal_of) if r.renewal_of is not None else None, r.server_generated_key, r.is_ca,
               *_revocation_columns(r.revocation).values())
        inserted = _Inserted(r.serial, r.profile)
        # The signature counts due by now ride along (the certificate's own signature was
        # counted just before): no transaction of their own on the issuing path.
        counts = self._take_counts(self._flush_every / 2)

        def unit(tx: RawTx) -> _Inserted:
            tx.execute(_INSERT_CERT, row)
            if counts:
                _upsert_counts(tx, counts)
            return inserted

        w = writer(self._sessions)
        try:
            self._retry(lambda: w.run(unit))
        except BaseException as exc:
            self._give_back(counts)
            if isinstance(exc, IntegrityError):
                raise DuplicateSerial(r.serial) from None
            raise

    def get(self, serial: int) -> CertificateRecord:
        try:
            key = serial_key(serial)
        except ValueError:
            raise UnknownSerial(serial) from None
        with transaction(self._sessions, write=False) as s:
            row = s.scalar(select(CertificateRow).where(CertificateRow.serial == key))
            if row is None:
                raise UnknownSerial(serial)
            return _cert_record(row)

    def search(self, query: CertificateQuery) -> list[CertificateRecord]:
        q = query
        at = _ts(q.as_of or dt.datetime.now(UTC))
        c = CertificateRow
        stmt: Select[tuple[CertificateRow]] = select(c)
        if q.ca_name is not None:
            stmt = stmt.where(c.ca_name == q.ca_name)
        if q.serial is not None:
            try:
                stmt = stmt.where(c.serial == serial_key(q.serial))
            except ValueError:
                return []
        if q.profile is not None:
            stmt = stmt.where(c.profile == q.profile)
        if q.requester is not None:
            stmt = stmt.where(c.requester == q.requester)
        if q.subject_contains:
            stmt = stmt.where(func.lower(c.subject).like(_like(q.subject_contains), escape="\\"))
        if q.san_contains:
            stmt = stmt.where(func.lower(c.sans).like(_like(q.san_contains), escape="\\"))
        if q.status is CertStatus.REVOKED:
            stmt = stmt.where(c.revoked_at.is_not(None))
        elif q.status is CertStatus.EXPIRED:
            stmt = stmt.where(c.revoked_at.is_(None), c.not_after < at)
        elif q.status is CertStatus.ACTIVE:
            stmt = stmt.where(c.revoked_at.is_(None), c.not_after >= at)
        if q.expires_after is not None:
            stmt = stmt.where(c.not_after >= _ts(q.expires_after))
        if q.expires_before is not None:
            stmt = stmt.where(c.not_after < _ts(q.expires_before))
        stmt = stmt.order_by(c.issued_at.desc(), c.serial.desc()).limit(q.limit).offset(q.offset)
        with transaction(self._sessions, write=False) as s:
            return [_cert_record(r) for r in s.scalars(stmt)]

    def set_revocation(self, serial: int, revocation: Revocation | None, *,
                       expected: Revocation | None) -> CertificateRecord:
        try:
            key = serial_key(serial)
        except ValueError:
            raise UnknownSerial(serial) from None
        c = CertificateRow
        conditions = [getattr(c, k).is_not_distinct_from(v) for k, v in _revocation_columns(expected).items()]

        def unit() -> CertificateRecord:
            with transaction(self._sessions) as s:
                row = s.execute(update(c).where(c.serial == key, *conditions)
                                .values(**_revocation_columns(revocation)).returning(c.ca_name)).first()
                if row is None:
                    if s.scalar(select(c.id).where(c.serial == key)) is None:
                        raise UnknownSerial(serial)
                    raise ConcurrentUpdate(serial)
                s.execute(update(CaRow).where(CaRow.name == row[0])
                          .values(revocation_epoch=CaRow.revocation_epoch + 1))
                updated = s.scalar(select(c).where(c.serial == key))
                assert updated is not None
                return _cert_record(updated)

        return self._retry(unit)

    def list_revoked(self, ca_name: str, *, not_expired_at: dt.datetime) -> list[CertificateRecord]:
        c = CertificateRow
        stmt = (select(c).where(c.ca_name == ca_name, c.revoked_at.is_not(None), c.not_after >= _ts(not_expired_at))
                .order_by(c.serial))
        with transaction(self._sessions, write=False) as s:
            return [_cert_record(r) for r in s.scalars(stmt)]

    def revocation_epoch(self, ca_name: str) -> int:
        with transaction(self._sessions, write=False) as s:
            return int(s.scalar(select(CaRow.revocation_epoch).where(CaRow.name == ca_name)) or 0)

    def add_usage(self, usage: UsageRecord) -> None:
        u = usage
        values = {"serial": serial_key(u.serial), "host": u.host, "ca_name": u.ca_name, "reported_by": u.reported_by,
                  "reported_at": _ts(u.reported_at), "in_use": u.in_use, "detail": u.detail}

        def unit() -> None:
            with transaction(self._sessions) as s:
                stmt = self._insert(s, UsageRow).values(**values)
                s.execute(stmt.on_conflict_do_update(
                    index_elements=["serial", "host"],
                    set_={k: v for k, v in values.items() if k not in ("serial", "host")}))

        self._retry(unit)

    def list_usage(self, *, ca_name: str | None = None, serial: int | None = None,
                   limit: int = 1000) -> list[UsageRecord]:
        stmt = select(UsageRow)
        if ca_name is not None:
            stmt = stmt.where(UsageRow.ca_name == ca_name)
        if serial is not None:
            stmt = stmt.where(UsageRow.serial == serial_key(serial))
        stmt = stmt.order_by(UsageRow.reported_at.desc(), UsageRow.serial.desc(), UsageRow.host.desc()).limit(limit)
        with transaction(self._sessions, write=False) as s:
            return [UsageRecord(serial=int(r.serial, 16), ca_name=r.ca_name, reported_by=r.reported_by, host=r.host,
                                reported_at=_dt(r.reported_at), in_use=bool(r.in_use), detail=r.detail)
                    for r in s.scalars(stmt)]

    # -- signature counters (buffered) -----------------------------------------------------------------
    def count_signature(self, ca_name: str, key_label: str, kind: SignatureKind, n: int = 1) -> None:
        with self._pending_lock:
            self._pending[(ca_name, key_label, kind.value)] += n
            due = self._clock() - self._last_flush >= self._flush_every
        if due:
            self.flush_counters()

    def _take_counts(self, older_than: float) -> dict[tuple[str, str, str], int]:
        """The pending counts if the last flush is at least ``older_than`` seconds ago (they are
        then the caller's to write or give back), else nothing."""
        with self._pending_lock:
            if not self._pending or self._clock() - self._last_flush < older_than:
                return {}
            pending, self._pending = self._pending, defaultdict(int)
            self._taken_after, self._last_flush = self._last_flush, self._clock()
            return pending

    def _give_back(self, counts: dict[tuple[str, str, str], int]) -> None:
        """Counts taken but not written: pending again, and due as they were."""
        if counts:
            with self._pending_lock:
                for k, v in counts.items():
                    self._pending[k] += v
                self._last_flush = min(self._last_flush, self._taken_after)

    def flush_counters(self) -> None:
        """Write the counts summed in memory (one upsert per counter, one transaction of their
        own: a request's attached audit entry is never carried by it)."""
        with self._flush_lock:
            pending = self._take_counts(0.0)
            if not pending:
                return
            try:
                self._retry(lambda: self._write_counts(pending))
            except Exception:
                self._give_back(pending)
                raise

    def _write_counts(self, counts: dict[tuple[str, str, str], int]) -> None:
        with raw_transaction(self._sessions) as tx:
            _upsert_counts(tx, counts)

    def signature_counts(self, ca_name: str | None = None) -> list[SignatureCount]:
        self.flush_counters()
        r = SignatureCountRow
        stmt = select(r).where(r.count != 0).order_by(r.ca_name, r.key_label, r.kind)
        if ca_name is not None:
            stmt = stmt.where(r.ca_name == ca_name)
        with transaction(self._sessions, write=False) as s:
            return [SignatureCount(x.ca_name, x.key_label, SignatureKind(x.kind), int(x.count)) for x in s.scalars(stmt)]

    def issuance_counts(self, *, ca_name: str | None, now: dt.datetime,
                        expiring_within: dt.timedelta) -> list[IssuanceCount]:
        c = CertificateRow
        at, horizon = _ts(now), _ts(now + expiring_within)
        one = 1
        stmt = (select(c.ca_name, c.profile, c.requester, func.count(),
                       func.sum(case((c.renewal_of.is_not(None), one), else_=0)),
                       func.sum(case((c.revoked_at.is_not(None), one), else_=0)),
                       func.sum(case(((c.revoked_at.is_(None)) & (c.not_after >= at) & (c.not_after < horizon), one),
                                     else_=0)))
                .group_by(c.ca_name, c.profile, c.requester).order_by(c.ca_name, c.profile, c.requester))
        if ca_name is not None:
            stmt = stmt.where(c.ca_name == ca_name)
        with transaction(self._sessions, write=False) as s:
            return [IssuanceCount(ca, profile, requester, int(n), int(ren or 0), int(rev or 0), int(exp or 0))
                    for ca, profile, requester, n, ren, rev, exp in s.execute(stmt)]

    def close(self) -> None:
        """Flush the buffered signature counters."""
        self.flush_counters()


__all__ = ["SqlCaStore", "serial_key"]
