"""The SQL SecretStore (SQLite embedded, PostgreSQL for several instances sharing one database).

Concurrency: every write is one transaction. On SQLite writers start with BEGIN IMMEDIATE
(db.transaction), so they are serialised; on PostgreSQL the secret's row is locked with
SELECT ... FOR UPDATE, and the (secret_id, version) primary key makes a lost update
impossible even if two first writes race (the loser retries or reports the conflict).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ...db import RawTx, read_one, transaction, writer
from ..errors import (
    CasMismatch,
    DomainExists,
    DomainNotEmpty,
    DomainNotFound,
    SecretExists,
    SecretNotFound,
    VersionNotFound,
)
from ..models import DomainKeyRow, DomainRow, SecretRow, VersionRow
from ..store import (
    DomainRecord,
    Resealer,
    SealedSecret,
    SealedVersion,
    Sealer,
    SecretMeta,
    VersionMeta,
    WrappedKey,
    WriteMode,
)

T = TypeVar("T")
_RETRIES = 5

# ---- the hot path: plain SQL on the DBAPI cursor (db.Writer, db.read_one), no ORM --------------
_D, _S, _V = DomainRow.__tablename__, SecretRow.__tablename__, VersionRow.__tablename__
_READ_SQL = (
    f"SELECT d.id, d.key_version, d.created_at, s.id, s.created_at, s.updated_at, s.current_version, "
    f"s.max_versions, v.version, v.created_at, v.deleted_at, v.destroyed, v.key_version, v.ciphertext "
    f"FROM {_D} d LEFT JOIN {_S} s ON s.domain_id = d.id AND s.name = ? "
    f"LEFT JOIN {_V} v ON v.secret_id = s.id AND v.version = {{wanted}} WHERE d.name = ?")
_READ_LATEST_SQL = _READ_SQL.format(wanted="s.current_version")
_READ_VERSION_SQL = _READ_SQL.format(wanted="?")
_DOMAIN_SQL = f"SELECT id, name, created_at, updated_at, key_version, max_versions FROM {_D} WHERE name = ?"
_SECRET_SQL = f"SELECT id, created_at, current_version, max_versions FROM {_S} WHERE domain_id = ? AND name = ?"
_NEW_SECRET_SQL = (f"INSERT INTO {_S} (domain_id, name, created_at, updated_at, current_version, max_versions) "
                   f"VALUES (?, ?, ?, ?, 0, NULL) RETURNING id")
_NEW_VERSION_SQL = (f"INSERT INTO {_V} (secret_id, version, created_at, deleted_at, destroyed, key_version, "
                    f"ciphertext) VALUES (?, ?, ?, NULL, ?, ?, ?)")
_BUMP_SQL = f"UPDATE {_S} SET current_version = ?, updated_at = ? WHERE id = ?"
_TRIM_SQL = f"DELETE FROM {_V} WHERE secret_id = ? AND version <= ?"


class SqlSecretStore:
    name = "sql"

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], float] = time.time) -> None:
        self._sessions = sessions
        self._clock = clock

    # ---- helpers -------------------------------------------------------------------
    def _retry(self, fn: Callable[[], T]) -> T:
        """Re-run a write unit that lost a race (unique violation, PG serialization, SQLite busy)."""
        for attempt in range(_RETRIES):
            try:
                return fn()
            except (IntegrityError, OperationalError):
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.002 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _lock(stmt: Any, s: Session) -> Any:
        return stmt.with_for_update() if s.get_bind().dialect.name == "postgresql" else stmt

    @staticmethod
    def _domain_row(s: Session, name: str, *, lock: bool = False) -> DomainRow:
        stmt = select(DomainRow).where(DomainRow.name == name)
        if lock and s.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = s.scalar(stmt)
        if row is None:
            raise DomainNotFound(name)
        return row

    @staticmethod
    def _domain_record(s: Session, row: DomainRow) -> DomainRecord:
        keys = s.scalars(select(DomainKeyRow).where(DomainKeyRow.domain_id == row.id).order_by(DomainKeyRow.version))
        return DomainRecord(
            id=row.id, name=row.name, created_at=row.created_at, updated_at=row.updated_at,
            key_version=row.key_version, max_versions=row.max_versions,
            keys=tuple(WrappedKey(k.version, k.kek_version, k.wrapped, k.created_at) for k in keys),
        )

    def _secret_row(self, s: Session, domain: str, name: str, *, lock: bool = False) -> tuple[DomainRow, SecretRow]:
        d = self._domain_row(s, domain)
        stmt = select(SecretRow).where(SecretRow.domain_id == d.id, SecretRow.name == name)
        if lock:
            stmt = self._lock(stmt, s)
        row = s.scalar(stmt)
        if row is None:
            raise SecretNotFound(domain, name)
        return d, row

    @staticmethod
    def _meta(s: Session, domain: str, row: SecretRow, d: DomainRow | None = None) -> SecretMeta:
        versions = s.scalars(select(VersionRow).where(VersionRow.secret_id == row.id).order_by(VersionRow.version))
        return SecretMeta(
            domain=domain, name=row.name, created_at=row.created_at, updated_at=row.updated_at,
            current_version=row.current_version, max_versions=row.max_versions,
            versions=tuple(VersionMeta(v.version, v.created_at, v.deleted_at, v.destroyed) for v in versions),
        )

    # ---- domains -------------------------------------------------------------------
    def create_domain(self, rec: DomainRecord) -> DomainRecord:
        try:
            with transaction(self._sessions) as s:
                if s.scalar(select(DomainRow.id).where(DomainRow.name == rec.name)) is not None:
                    raise DomainExists(rec.name)
                s.add(DomainRow(id=rec.id, name=rec.name, created_at=rec.created_at, updated_at=rec.updated_at,
                                key_version=rec.key_version, max_versions=rec.max_versions))
                s.flush()
                for k in rec.keys:
                    s.add(DomainKeyRow(domain_id=rec.id, version=k.version, kek_version=k.kek_version,
                                       wrapped=k.wrapped, created_at=k.created_at))
        except IntegrityError:
            raise DomainExists(rec.name) from None
        return rec

    def get_domain(self, name: str) -> DomainRecord:
        with transaction(self._sessions, write=False) as s:
            return self._domain_record(s, self._domain_row(s, name))

    def list_domains(self) -> list[DomainRecord]:
        with transaction(self._sessions, write=False) as s:
            return [self._domain_record(s, r) for r in s.scalars(select(DomainRow).order_by(DomainRow.name))]

    def count_secrets(self, name: str) -> int:
        with transaction(self._sessions, write=False) as s:
            d = self._domain_row(s, name)
            return int(s.scalar(select(func.count()).select_from(SecretRow).where(SecretRow.domain_id == d.id)) or 0)

    def delete_domain(self, name: str, *, force: bool) -> int:
        with transaction(self._sessions) as s:
            d = self._domain_row(s, name, lock=True)
            n = int(s.scalar(select(func.count()).select_from(SecretRow).where(SecretRow.domain_id == d.id)) or 0)
            if n and not force:
                raise DomainNotEmpty(name, n)
            ids = select(SecretRow.id).where(SecretRow.domain_id == d.id)
            s.execute(delete(VersionRow).where(VersionRow.secret_id.in_(ids)))
            s.execute(delete(SecretRow).where(SecretRow.domain_id == d.id))
            s.execute(delete(DomainKeyRow).where(DomainKeyRow.domain_id == d.id))
            s.execute(delete(DomainRow).where(DomainRow.id == d.id))
            return n

    def set_domain_keys(self, name: str, keys: Sequence[WrappedKey], key_version: int) -> DomainRecord:
        with transaction(self._sessions) as s:
            d = self._domain_row(s, name, lock=True)
            existing = {k.version: k for k in s.scalars(select(DomainKeyRow).where(DomainKeyRow.domain_id == d.id))}
            for k in keys:
                row = existing.get(k.version)
                if row is None:
                    s.add(DomainKeyRow(domain_id=d.id, version=k.version, kek_version=k.kek_version,
                                       wrapped=k.wrapped, created_at=k.created_at))
                else:
                    row.kek_version, row.wrapped = k.kek_version, k.wrapped
            d.key_version = max(d.key_version, key_version)
            d.updated_at = self._clock()
            s.flush()
            return self._domain_record(s, d)

    def set_domain_max_versions(self, name: str, max_versions: int | None) -> DomainRecord:
        with transaction(self._sessions) as s:
            d = self._domain_row(s, name, lock=True)
            d.max_versions, d.updated_at = max_versions, self._clock()
            return self._domain_record(s, d)

    # ---- secrets -------------------------------------------------------------------
    def list_secrets(self, domain: str) -> list[str]:
        with transaction(self._sessions, write=False) as s:
            d = self._domain_row(s, domain)
            return list(s.scalars(select(SecretRow.name).where(SecretRow.domain_id == d.id).order_by(SecretRow.name)))

    def write(self, domain: str, name: str, seal: Sealer, *, mode: WriteMode, cas: int | None,
              default_max_versions: int) -> SecretMeta:
        def unit(tx: RawTx) -> SecretMeta:
            now = self._clock()
            d = tx.one(_DOMAIN_SQL, (domain,))
            if d is None:
                raise DomainNotFound(domain)
            dom_id, dom_name, dom_created, dom_updated, key_version, dom_max = d
            # PostgreSQL: lock the secret's row; SQLite: the transaction already holds the write lock.
            row = tx.one(_SECRET_SQL + (" FOR UPDATE" if tx.dialect == "postgresql" else ""), (dom_id, name))
            if row is None:
                if mode is WriteMode.UPDATE:
                    raise SecretNotFound(domain, name)
                if cas not in (None, 0):
                    raise CasMismatch(name, cas, 0)
                # unique (domain_id, name): a racing creator fails here and retries
                sid = tx.one(_NEW_SECRET_SQL, (dom_id, name, now, now))[0]
                created, current, sec_max = now, 0, None
            else:
                sid, created, current, sec_max = row
                if mode is WriteMode.CREATE:
                    raise SecretExists(domain, name)
                if cas is not None and cas != current:
                    raise CasMismatch(name, cas, current)
            version = current + 1
            kv, blob = seal(DomainRecord(dom_id, dom_name, dom_created, dom_updated, key_version, dom_max),
                            version)
            tx.execute(_NEW_VERSION_SQL, (sid, version, now, False, kv, blob))
            tx.execute(_BUMP_SQL, (version, now, sid))
            keep = sec_max or dom_max or default_max_versions
            if version > keep:
                tx.execute(_TRIM_SQL, (sid, version - keep))
            return SecretMeta(domain, name, created, now, version, sec_max, (VersionMeta(version, now),))

        # One unit of the process's Writer: on SQLite, concurrent writes share one commit.
        w = writer(self._sessions)
        return self._retry(lambda: w.run(unit))

    def read(self, domain: str, name: str, version: int | None) -> tuple[DomainRecord, SecretMeta, SealedVersion]:
        if version is None:
            row = read_one(self._sessions, _READ_LATEST_SQL, (name, domain))
        else:
            row = read_one(self._sessions, _READ_VERSION_SQL, (name, version, domain))
        if row is None:
            raise DomainNotFound(domain)
        (dom_id, key_version, dom_created, sid, sec_created, sec_updated, current, sec_max,
         ver, ver_created, ver_deleted, ver_destroyed, ver_key_version, ciphertext) = row
        if sid is None:
            raise SecretNotFound(domain, name)
        wanted = version if version is not None else current
        if ver is None:
            raise VersionNotFound(name, wanted, "destroyed" if 0 < wanted <= current else "absent")
        vm = VersionMeta(ver, ver_created, ver_deleted, bool(ver_destroyed))
        if vm.state != "live" or ciphertext is None:
            raise VersionNotFound(name, wanted, vm.state if vm.state != "live" else "destroyed")
        d = DomainRecord(dom_id, domain, dom_created, dom_created, key_version)
        meta = SecretMeta(domain, name, sec_created, sec_updated, current, sec_max, (vm,))
        return d, meta, SealedVersion(vm, ver_key_version, bytes(ciphertext))

    def metadata(self, domain: str, name: str) -> SecretMeta:
        with transaction(self._sessions, write=False) as s:
            _d, row = self._secret_row(s, domain, name)
            return self._meta(s, domain, row)

    def set_max_versions(self, domain: str, name: str, max_versions: int | None,
                         default_max_versions: int) -> SecretMeta:
        with transaction(self._sessions) as s:
            d, row = self._secret_row(s, domain, name, lock=True)
            row.max_versions, row.updated_at = max_versions, self._clock()
            keep = row.max_versions or d.max_versions or default_max_versions
            s.execute(delete(VersionRow).where(VersionRow.secret_id == row.id,
                                               VersionRow.version <= row.current_version - keep))
            return self._meta(s, domain, row)

    def _mark(self, domain: str, name: str, versions: Sequence[int] | None,
              change: Callable[[VersionRow, float], None]) -> SecretMeta:
        with transaction(self._sessions) as s:
            _d, row = self._secret_row(s, domain, name, lock=True)
            wanted = list(versions) if versions is not None else [row.current_version]
            now = self._clock()
            for v in s.scalars(select(VersionRow).where(VersionRow.secret_id == row.id,
                                                        VersionRow.version.in_(wanted))):
                change(v, now)
            row.updated_at = now
            s.flush()
            return self._meta(s, domain, row)

    def delete_versions(self, domain: str, name: str, versions: Sequence[int] | None) -> SecretMeta:
        def soft(v: VersionRow, now: float) -> None:
            if v.deleted_at is None and not v.destroyed:
                v.deleted_at = now

        return self._mark(domain, name, versions, soft)

    def undelete_versions(self, domain: str, name: str, versions: Sequence[int]) -> SecretMeta:
        def restore(v: VersionRow, _now: float) -> None:
            if not v.destroyed:
                v.deleted_at = None

        return self._mark(domain, name, versions, restore)

    def destroy_versions(self, domain: str, name: str, versions: Sequence[int]) -> SecretMeta:
        def destroy(v: VersionRow, _now: float) -> None:
            v.destroyed, v.ciphertext = True, None

        return self._mark(domain, name, versions, destroy)

    def purge(self, domain: str, name: str) -> None:
        with transaction(self._sessions) as s:
            _d, row = self._secret_row(s, domain, name, lock=True)
            s.execute(delete(VersionRow).where(VersionRow.secret_id == row.id))
            s.execute(delete(SecretRow).where(SecretRow.id == row.id))

    # ---- maintenance ---------------------------------------------------------------
    def reseal(self, domain: str, reseal: Resealer) -> int:
        """Re-encrypt every kept version for which ``reseal`` returns a new ciphertext (batches of 200)."""
        with transaction(self._sessions, write=False) as s:
            d = self._domain_row(s, domain)
            keys = list(s.execute(
                select(VersionRow.secret_id, VersionRow.version, SecretRow.name)
                .join(SecretRow, SecretRow.id == VersionRow.secret_id)
                .where(SecretRow.domain_id == d.id, VersionRow.ciphertext.is_not(None))))
        changed = 0
        for i in range(0, len(keys), 200):
            with transaction(self._sessions) as s:
                for sid, ver, name in keys[i:i + 200]:
                    v = s.get(VersionRow, (sid, ver))
                    if v is None or v.ciphertext is None:
                        continue
                    out = reseal(name, v.version, v.key_version, v.ciphertext)
                    if out is not None:
                        v.key_version, v.ciphertext = out
                        changed += 1
        return changed

    def export_domain(self, domain: str) -> Iterator[SealedSecret]:
        with transaction(self._sessions, write=False) as s:
            d = self._domain_row(s, domain)
            rows = list(s.scalars(select(SecretRow).where(SecretRow.domain_id == d.id).order_by(SecretRow.name)))
        for row in rows:
            with transaction(self._sessions, write=False) as s:
                vs = list(s.scalars(select(VersionRow).where(VersionRow.secret_id == row.id)
                                    .order_by(VersionRow.version)))
                metas = tuple(VersionMeta(v.version, v.created_at, v.deleted_at, v.destroyed) for v in vs)
                yield SealedSecret(
                    SecretMeta(domain, row.name, row.created_at, row.updated_at, row.current_version,
                               row.max_versions, metas),
                    tuple(SealedVersion(m, v.key_version, v.ciphertext) for m, v in zip(metas, vs, strict=True)),
                )

    def import_secret(self, domain: str, secret: SealedSecret) -> bool:
        """Insert a whole exported secret unless one of that name exists (returns False then)."""
        m = secret.meta
        with transaction(self._sessions) as s:
            d = self._domain_row(s, domain, lock=True)
            if s.scalar(select(SecretRow.id).where(SecretRow.domain_id == d.id, SecretRow.name == m.name)):
                return False
            row = SecretRow(domain_id=d.id, name=m.name, created_at=m.created_at, updated_at=m.updated_at,
                            current_version=m.current_version, max_versions=m.max_versions)
            s.add(row)
            s.flush()
            for v in secret.versions:
                s.add(VersionRow(secret_id=row.id, version=v.meta.version, created_at=v.meta.created_at,
                                 deleted_at=v.meta.deleted_at, destroyed=v.meta.destroyed,
                                 key_version=v.key_version, ciphertext=v.ciphertext))
        return True

    def ping(self) -> None:
        with transaction(self._sessions, write=False) as s:
            s.execute(select(1))
