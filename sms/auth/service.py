"""Token and policy management (no Flask here: collaborators come in as arguments).

Tokens are ``csm.`` + 43 base64url characters (256 random bits). Only the SHA-256 of a token
is stored; a token is addressed for management by its *accessor*, a separate random id that
grants nothing by itself.

Resolved identities are cached in the process for ``cache_ttl`` seconds (keyed by the token's
hash, never the token). Revoking or renewing a token and writing or deleting a policy empty
this process's cache at once; another instance sharing the database notices such a change
when its own entry expires, i.e. within ``cache_ttl``. Expiry is checked on every hit.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..db import transaction
from ..errors import BadRequest, Conflict, NotFound, PermissionDenied, Unauthenticated
from .models import PolicyRow, TokenRow
from .policy import ROOT_POLICY, Capability, InvalidPolicy, Policy, allowed, parse_policy

TOKEN_PREFIX = "csm."
log = logging.getLogger("csm.auth")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token (never the token itself)."""

    accessor: str
    display_name: str
    policies: tuple[str, ...]
    is_root: bool
    created_at: int
    expires_at: int
    max_expires_at: int
    ttl: int
    renewable: bool
    revoked: bool

    def to_json(self) -> dict[str, object]:
        return {
            "accessor": self.accessor,
            "display_name": self.display_name,
            "policies": list(self.policies),
            "root": self.is_root,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "max_expires_at": self.max_expires_at,
            "ttl": self.ttl,
            "renewable": self.renewable,
            "revoked": self.revoked,
        }


@dataclass(frozen=True)
class Identity:
    """Who is calling: a token holder or a client-certificate subject, with their policies."""

    kind: str  # "token" | "cert" | "anonymous"
    name: str  # accessor or certificate subject; safe to log
    policies: tuple[Policy, ...] = ()
    is_root: bool = False
    token: TokenInfo | None = field(default=None, repr=False)

    def can(self, path: str, capability: Capability) -> bool:
        return allowed(self.policies, path, capability, root=self.is_root)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


def _info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        accessor=row.accessor,
        display_name=row.display_name,
        policies=tuple(json.loads(row.policies)),
        is_root=row.is_root,
        created_at=row.created_at,
        expires_at=row.expires_at,
        max_expires_at=row.max_expires_at,
        ttl=row.ttl,
        renewable=row.renewable,
        revoked=row.revoked_at is not None,
    )


class IdentityCache:
    """Token hash -> (identity, monotonic time fetched); bounded, emptied by :meth:`clear`.

    ``clear`` bumps a generation number: a lookup that read the database before a clear does
    not store its (possibly stale) result after it.

    ``signal``: a file shared by the processes of one instance (the workers of ``csm serve``, in
    its data directory). :meth:`clear` replaces it, and every cache sharing it empties itself at
    its next lookup, so a revoke or policy change applies in every worker at once; a ``stat``
    per lookup (about a microsecond). Without it (or for other instances) ``ttl`` bounds how
    long an entry can outlive a change."""

    def __init__(self, ttl: float, *, max_entries: int = 10000,
                 monotonic: Callable[[], float] = time.monotonic, signal: Path | None = None) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._monotonic = monotonic
        self._entries: dict[str, tuple[Identity, float]] = {}
        self._lock = threading.Lock()
        self.generation = 0
        self._signal = signal
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int]:
        if self._signal is None:
            return (0, 0)
        try:
            st = os.stat(self._signal)
        except OSError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    def get(self, key: str) -> Identity | None:
        if self._signal is not None:
            stamp = self._stamp()
            if stamp != self._seen:  # another process changed tokens or policies
                with self._lock:
                    self._seen = stamp
                    self.generation += 1
                    self._entries.clear()
                return None
        hit = self._entries.get(key)
        if hit is None:
            return None
        if self._monotonic() - hit[1] >= self.ttl:
            self._entries.pop(key, None)
            return None
        return hit[0]

    def put(self, key: str, ident: Identity, generation: int) -> None:
        with self._lock:
            if generation != self.generation:
                return
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = (ident, self._monotonic())

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()
        if self._signal is not None:
            # a new file each time (new inode): what the other processes compare
            tmp = self._signal.with_name(f".{self._signal.name}.{os.getpid()}.{threading.get_ident()}")
            try:
                tmp.write_bytes(secrets.token_bytes(8))
                os.replace(tmp, self._signal)
            except OSError as exc:  # the other workers then apply it within ttl
                log.warning("cannot signal a token or policy change to the other workers: %s", exc.strerror)


class AuthService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        default_ttl: int,
        max_ttl: int,
        clock: Callable[[], float] = time.time,
        cache_ttl: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        cache_signal: Path | None = None,
    ) -> None:
        self._sessions = sessions
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self._clock = clock
        self.cache = IdentityCache(cache_ttl, monotonic=monotonic, signal=cache_signal)

    def _now(self) -> int:
        return int(self._clock())

    # ---- tokens ---------------------------------------------------------------------
    def create_token(
        self,
        *,
        policies: Sequence[str] = (),
        ttl: int | None = None,
        max_ttl: int | None = None,
        display_name: str = "",
        renewable: bool = True,
        root: bool = False,
        parent: Identity | None = None,
    ) -> tuple[str, TokenInfo]:
        """Create a token; returns (the token — shown once —, its info)."""
        ttl = self.default_ttl if ttl is None else ttl
        max_ttl = self.max_ttl if max_ttl is None else max_ttl
        if not isinstance(ttl, int) or ttl < 1 or ttl > self.max_ttl:
            raise BadRequest(f"ttl must be between 1 and {self.max_ttl} seconds")
        if not isinstance(max_ttl, int) or max_ttl < ttl or max_ttl > self.max_ttl:
            raise BadRequest(f"max_ttl must be between ttl and {self.max_ttl} seconds")
        if len(display_name) > 128:
            raise BadRequest("display_name is at most 128 characters")
        names = tuple(dict.fromkeys(policies))
        if ROOT_POLICY in names and not root:
            raise BadRequest("the root policy cannot be attached; create a root token with `csm init`")
        if parent is not None and not parent.is_root:
            # A caller can only hand out policies it holds itself.
            held = {p.name for p in parent.policies}
            missing = sorted(set(names) - held)
            if missing:
                raise PermissionDenied(f"cannot grant policies the caller does not hold: {', '.join(missing)}")
        token = new_token()
        now = self._now()
        row = TokenRow(
            accessor=secrets.token_hex(12),
            token_hash=hash_token(token),
            display_name=display_name,
            policies=json.dumps(list(names)),
            is_root=root,
            parent=parent.name if parent and parent.kind == "token" else None,
            created_at=now,
            expires_at=now + ttl,
            max_expires_at=now + max_ttl,
            ttl=ttl,
            renewable=renewable,
            revoked_at=None,
        )
        with transaction(self._sessions) as s:
            if names:
                known = set(s.scalars(select(PolicyRow.name).where(PolicyRow.name.in_(names))))
                unknown = sorted(set(names) - known)
                if unknown:
                    raise BadRequest(f"unknown policies: {', '.join(unknown)}")
            s.add(row)
        return token, _info(row)

    def authenticate(self, token: str) -> Identity:
        """Resolve a presented token; Unauthenticated for unknown, expired or revoked tokens."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            raise Unauthenticated("the token is not valid")
        digest = hash_token(token)
        cache = self.cache
        if cache.ttl > 0:
            hit = cache.get(digest)
            if hit is not None and hit.token is not None and hit.token.expires_at > self._now():
                return hit
        generation = cache.generation
        with transaction(self._sessions, write=False) as s:
            row = s.scalar(select(TokenRow).where(TokenRow.token_hash == digest))
            if row is None or not hmac.compare_digest(row.token_hash, digest):
                raise Unauthenticated("the token is not valid")
            if row.revoked_at is not None or row.expires_at <= self._now():
                raise Unauthenticated("the token has expired or was revoked")
            info = _info(row)
            policies = self._load_policies(s, info.policies)
        ident = Identity("token", info.accessor, policies, info.is_root, info)
        if cache.ttl > 0:
            cache.put(digest, ident, generation)
        return ident

    def _load_policies(self, s: Session, names: Sequence[str]) -> tuple[Policy, ...]:
        if not names:
            return ()
        rows = s.scalars(select(PolicyRow).where(PolicyRow.name.in_(list(names))))
        return tuple(parse_policy(r.name, json.loads(r.rules)) for r in rows)

    def policies_by_name(self, names: Sequence[str]) -> tuple[Policy, ...]:
        with transaction(self._sessions, write=False) as s:
            return self._load_policies(s, names)

    def lookup(self, accessor: str) -> TokenInfo:
        with transaction(self._sessions, write=False) as s:
            row = s.get(TokenRow, accessor)
            if row is None:
                raise NotFound("no token with this accessor")
            return _info(row)

    def list_tokens(self) -> list[TokenInfo]:
        with transaction(self._sessions, write=False) as s:
            return [_info(r) for r in s.scalars(select(TokenRow).order_by(TokenRow.created_at))]

    def renew(self, accessor: str, increment: int | None = None) -> TokenInfo:
        now = self._now()
        with transaction(self._sessions) as s:
            row = s.get(TokenRow, accessor)
            if row is None:
                raise NotFound("no token with this accessor")
            if row.revoked_at is not None or row.expires_at <= now:
                raise Conflict("the token has expired or was revoked and cannot be renewed")
            if not row.renewable:
                raise Conflict("the token is not renewable")
            inc = row.ttl if increment is None else increment
            if not isinstance(inc, int) or inc < 1:
                raise BadRequest("increment must be a positive number of seconds")
            row.expires_at = min(now + inc, row.max_expires_at)
            info = _info(row)
        self.cache.clear()
        return info

    def revoke(self, accessor: str) -> TokenInfo:
        """Revoke a token and, recursively, the tokens it created."""
        now = self._now()
        with transaction(self._sessions) as s:
            row = s.get(TokenRow, accessor)
            if row is None:
                raise NotFound("no token with this accessor")
            pending = [row]
            while pending:
                r = pending.pop()
                if r.revoked_at is None:
                    r.revoked_at = now
                pending.extend(s.scalars(select(TokenRow).where(TokenRow.parent == r.accessor)))
            info = _info(row)
        self.cache.clear()
        return info

    def has_root_token(self) -> bool:
        with transaction(self._sessions, write=False) as s:
            return s.scalar(select(TokenRow.accessor).where(TokenRow.is_root.is_(True)).limit(1)) is not None

    # ---- policies -------------------------------------------------------------------
    def write_policy(self, name: str, rules: object) -> Policy:
        try:
            policy = parse_policy(name, rules)
        except InvalidPolicy as exc:
            raise BadRequest(str(exc)) from None
        now = self._now()
        doc = json.dumps(policy.to_document()["rules"])
        with transaction(self._sessions) as s:
            row = s.get(PolicyRow, name)
            if row is None:
                s.add(PolicyRow(name=name, rules=doc, created_at=now, updated_at=now, version=1))
            else:
                row.rules, row.updated_at, row.version = doc, now, row.version + 1
        self.cache.clear()
        return policy

    def read_policy(self, name: str) -> dict[str, object]:
        with transaction(self._sessions, write=False) as s:
            row = s.get(PolicyRow, name)
            if row is None:
                raise NotFound(f"no policy named {name!r}")
            return {
                "name": row.name,
                "rules": json.loads(row.rules),
                "version": row.version,
                "created_at": row.created_at,
                "updated_at": row.updated_at,
            }

    def list_policies(self) -> list[str]:
        with transaction(self._sessions, write=False) as s:
            return list(s.scalars(select(PolicyRow.name).order_by(PolicyRow.name)))

    def delete_policy(self, name: str) -> None:
        with transaction(self._sessions) as s:
            row = s.get(PolicyRow, name)
            if row is None:
                raise NotFound(f"no policy named {name!r}")
            s.delete(row)
        self.cache.clear()
