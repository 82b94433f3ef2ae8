"""Append-only, hash-chained audit log with a token-held MAC on every entry.

Each entry's hash covers its canonical JSON (which includes the previous entry's hash), so
an edited, inserted or deleted entry breaks the chain. Because an attacker with database
access could recompute a plain hash chain, every entry hash is also authenticated with
AES-GMAC (AES-256-GCM over empty plaintext, the hash as associated data) under a key that
never leaves the token: ``csm audit verify`` detects edits even when the hashes were redone.

Entries record who, what, when and the outcome; they never contain secret values or tokens
(callers pass only names, accessors and paths).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..db import transaction
from .models import AuditHead, AuditRow

log = logging.getLogger(__name__)

GENESIS = "0" * 64


class MacKeyStore(Protocol):
    """The slice of hsm.KeyStore the audit log needs."""

    def encrypt(self, label: str, plaintext: bytes, aad: bytes = b"") -> bytes: ...

    def decrypt(self, label: str, blob: bytes, aad: bytes = b"") -> bytes: ...


@dataclass(frozen=True)
class AuditEvent:
    actor: str
    action: str
    resource: str
    outcome: str  # "ok" | "denied" | "error" | "unauthenticated"
    status: int
    request_id: str = ""
    remote: str = ""
    detail: dict[str, Any] | None = None


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    ok: bool
    first_bad_seq: int | None
    problem: str


def _canonical(seq: int, ts: str, ev: AuditEvent, prev: str) -> bytes:
    doc = {
        "seq": seq,
        "ts": ts,
        "actor": ev.actor,
        "action": ev.action,
        "resource": ev.resource,
        "outcome": ev.outcome,
        "status": ev.status,
        "request_id": ev.request_id,
        "remote": ev.remote,
        "detail": ev.detail or {},
        "prev": prev,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _row_event(r: AuditRow) -> AuditEvent:
    return AuditEvent(r.actor, r.action, r.resource, r.outcome, r.status, r.request_id, r.remote, json.loads(r.detail))


class AuditLog:
    def __init__(self, sessions: sessionmaker[Session], keystore: MacKeyStore, mac_key_label: str) -> None:
        self._sessions = sessions
        self._ks = keystore
        self._label = mac_key_label

    def append(self, ev: AuditEvent) -> int:
        """Append one entry (serialised across processes by the head row lock); returns its seq."""
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        with transaction(self._sessions) as s:
            head = s.scalar(select(AuditHead).where(AuditHead.id == 1).with_for_update())
            if head is None:  # pragma: no cover - created by the migration
                head = AuditHead(id=1, seq=0, entry_hash=GENESIS)
                s.add(head)
            seq = head.seq + 1
            digest = hashlib.sha256(_canonical(seq, ts, ev, head.entry_hash)).hexdigest()
            mac = self._ks.encrypt(self._label, b"", aad=bytes.fromhex(digest))
            s.add(
                AuditRow(
                    seq=seq,
                    ts=ts,
                    actor=ev.actor[:256],
                    action=ev.action[:64],
                    resource=ev.resource[:1024],
                    outcome=ev.outcome,
                    status=ev.status,
                    request_id=ev.request_id[:64],
                    remote=ev.remote[:64],
                    detail=json.dumps(ev.detail or {}, sort_keys=True),
                    prev_hash=head.entry_hash,
                    entry_hash=digest,
                    mac=mac,
                    mac_key=self._label,
                )
            )
            head.seq, head.entry_hash = seq, digest
        return seq

    def entries(self, *, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        with transaction(self._sessions, write=False) as s:
            rows = s.scalars(select(AuditRow).where(AuditRow.seq > after).order_by(AuditRow.seq).limit(limit))
            return [
                {
                    "seq": r.seq, "ts": r.ts, "actor": r.actor, "action": r.action, "resource": r.resource,
                    "outcome": r.outcome, "status": r.status, "request_id": r.request_id, "remote": r.remote,
                    "detail": json.loads(r.detail), "hash": r.entry_hash,
                }
                for r in rows
            ]

    def _iter_rows(self, batch: int = 2000) -> Iterator[AuditRow]:
        last = 0
        while True:
            with transaction(self._sessions, write=False) as s:
                rows = list(s.scalars(select(AuditRow).where(AuditRow.seq > last).order_by(AuditRow.seq).limit(batch)))
            if not rows:
                return
            yield from rows
            last = rows[-1].seq

    def verify(self, progress: Any = None) -> VerifyReport:
        """Walk the whole chain; report the first entry that fails (hash, link, MAC or head)."""
        from hsm import DecryptionFailed, KeyNotFound

        prev, expected_seq, n = GENESIS, 1, 0
        for r in self._iter_rows():
            n += 1
            if progress is not None:
                progress(n)
            if r.seq != expected_seq:
                return VerifyReport(n, False, r.seq, f"entry {expected_seq} is missing (found {r.seq})")
            if r.prev_hash != prev:
                return VerifyReport(n, False, r.seq, f"entry {r.seq} does not link to entry {r.seq - 1}")
            digest = hashlib.sha256(_canonical(r.seq, r.ts, _row_event(r), r.prev_hash)).hexdigest()
            if digest != r.entry_hash:
                return VerifyReport(n, False, r.seq, f"entry {r.seq} was modified (hash mismatch)")
            try:
                self._ks.decrypt(r.mac_key, r.mac, aad=bytes.fromhex(digest))
            except (DecryptionFailed, KeyNotFound):
                return VerifyReport(n, False, r.seq, f"entry {r.seq} has an invalid MAC (rewritten chain?)")
            prev, expected_seq = r.entry_hash, r.seq + 1
        with transaction(self._sessions, write=False) as s:
            head = s.get(AuditHead, 1)
        if head is None or head.seq != expected_seq - 1 or head.entry_hash != prev:
            return VerifyReport(n, False, expected_seq, "the chain head does not match the last entry (truncated log?)")
        return VerifyReport(n, True, None, "")
