"""The audit log table (append-only, hash-chained) and its chain head."""
from __future__ import annotations

from sqlalchemy import BigInteger, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base


class _Entry:
    """The columns of an audit entry (who, what, when, outcome), in the chain or its outbox."""

    ts: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(1024))
    outcome: Mapped[str] = mapped_column(String(32))
    status: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str] = mapped_column(String(64))
    remote: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="{}")


class AuditRow(_Entry, Base):
    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[bytes] = mapped_column(LargeBinary)
    mac_key: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row (id=1) holding the chain head; appenders lock it (FOR UPDATE / BEGIN IMMEDIATE)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[str] = mapped_column(String(64))


class AuditJournalMark(Base):
    """How far each audit journal file has been folded into the chain (migration 0006):
    ``folded`` is a byte offset, -1 once the file is finished; ``updated`` is Unix time."""

    __tablename__ = "audit_journals"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    folded: Mapped[int] = mapped_column(BigInteger)
    updated: Mapped[int] = mapped_column(BigInteger)


class AuditPending(_Entry, Base):
    """The outbox (with the audit journal): entries of committed writes waiting to be linked
    into the chain (migration 0006). A write inserts its entry here in its own transaction —
    atomic with the write, without touching the chain head or the token — and the fold links,
    MACs and deletes it."""

    __tablename__ = "audit_pending"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # the writing process (its journal's origin; migration 0007): it links its own entries;
    # others take them once they are older than the orphan interval ('' = anyone)
    origin: Mapped[str] = mapped_column(String(64), default="", server_default="")


class MetaRow(Base):
    """Instance-wide key/value facts (instance id, init time, key labels in use)."""

    __tablename__ = "csm_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
