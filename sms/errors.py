"""Service errors and the one table that maps them (and hsm/ca errors) to RFC 9457 problems.

Every error a client can see is a problem document: ``type`` is a stable URI under
``https://csm.dev/problems/``, ``title`` is fixed per type, ``detail`` is a safe,
human-readable sentence (never exception text from a library, never a secret).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hsm

PROBLEM_BASE = "https://csm.dev/problems/"


class CsmError(Exception):
    """Root of the service's own errors. ``detail`` must be safe to show to the caller."""

    problem: str = "internal"

    def __init__(self, detail: str = "", **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions


class BadRequest(CsmError):
    problem = "bad-request"


class NotFound(CsmError):
    problem = "not-found"


class Conflict(CsmError):
    problem = "conflict"


class Unauthenticated(CsmError):
    problem = "unauthenticated"


class PermissionDenied(CsmError):
    problem = "permission-denied"


class ServiceUnavailable(CsmError):
    problem = "unavailable"


class ConfigError(CsmError):
    problem = "config"


@dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.slug


_TYPES = [
    ProblemType("bad-request", 400, "Bad request"),
    ProblemType("validation", 422, "Request validation failed"),
    ProblemType("unauthenticated", 401, "Authentication required"),
    ProblemType("permission-denied", 403, "Permission denied"),
    ProblemType("not-found", 404, "Not found"),
    ProblemType("method-not-allowed", 405, "Method not allowed"),
    ProblemType("not-acceptable", 406, "Not acceptable"),
    ProblemType("conflict", 409, "Conflict"),
    ProblemType("precondition-failed", 412, "Precondition failed"),
    ProblemType("payload-too-large", 413, "Request body too large"),
    ProblemType("unsupported-media-type", 415, "Unsupported media type"),
    ProblemType("precondition-required", 428, "Precondition required"),
    ProblemType("too-many-requests", 429, "Too many requests"),
    ProblemType("internal", 500, "Internal error"),
    ProblemType("unavailable", 503, "Service unavailable"),
    ProblemType("token-unavailable", 503, "Key token unavailable"),
    ProblemType("sealed", 503, "Service sealed"),
    ProblemType("config", 500, "Configuration error"),
    ProblemType("http", 400, "HTTP error"),
]
PROBLEM_TYPES: dict[str, ProblemType] = {t.slug: t for t in _TYPES}
_BY_STATUS: dict[int, ProblemType] = {}
for _t in _TYPES:
    _BY_STATUS.setdefault(_t.status, _t)


def problem_for_status(status: int) -> ProblemType:
    return _BY_STATUS.get(status) or ProblemType("http", status, "HTTP error")


# Library errors that reach the web layer: (exception class, problem slug, safe detail or None = str(exc)).
# hsm messages are written to be safe (no PINs, no key bytes), so their text may be shown.
EXCEPTION_TABLE: list[tuple[type[BaseException], str, str | None]] = [
    (hsm.TokenUnavailable, "token-unavailable", "the key token is unavailable; retry shortly"),
    (hsm.TokenNotInitialized, "token-unavailable", "the key token is not initialised"),
    (hsm.WrongPin, "sealed", "the service cannot log in to its key token"),
    (hsm.SealError, "sealed", "the service is sealed: its token PIN could not be unsealed"),
    (hsm.KeyNotFound, "not-found", None),
    (hsm.DuplicateLabel, "conflict", None),
    (hsm.InvalidKeyMaterial, "bad-request", None),
    (hsm.MechanismUnsupported, "bad-request", None),
    (hsm.WrongKeyType, "bad-request", None),
    (hsm.DecryptionFailed, "internal", "stored data failed its integrity check"),
]


def register_exception(exc_type: type[BaseException], slug: str, detail: str | None = None) -> None:
    """Features (ca, cmp, secrets) add their own error classes to the table at import."""
    if slug not in PROBLEM_TYPES:
        raise ValueError(f"unknown problem type {slug!r}")
    EXCEPTION_TABLE.insert(0, (exc_type, slug, detail))


def classify(exc: BaseException) -> tuple[ProblemType, str, dict[str, Any]]:
    """Return (problem type, safe detail, extensions) for any exception the web layer sees."""
    if isinstance(exc, CsmError):
        return PROBLEM_TYPES[exc.problem], exc.detail or PROBLEM_TYPES[exc.problem].title, dict(exc.extensions)
    for exc_type, slug, detail in EXCEPTION_TABLE:
        if isinstance(exc, exc_type):
            ext = dict(getattr(exc, "problem_extensions", {}) or {})
            return PROBLEM_TYPES[slug], detail if detail is not None else str(exc), ext
    return PROBLEM_TYPES["internal"], "an internal error occurred; it has been logged", {}
