"""Errors of the REST client: problem documents turned into typed exceptions in one place."""
from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://csm.dev/problems/"


class CsmApiError(Exception):
    """Root of errors raised by :class:`client_sdk.CsmClient`. Carries the problem document."""

    slug = ""

    def __init__(self, status: int, title: str, detail: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(f"{detail or title} (HTTP {status})")
        self.status = status
        self.title = title
        self.detail = detail
        self.problem = problem or {}


class TransportError(CsmApiError):
    """The service could not be reached (connection refused, TLS failure, timeout)."""


class BadRequest(CsmApiError):
    slug = "bad-request"


class ValidationFailed(CsmApiError):
    slug = "validation"


class Unauthenticated(CsmApiError):
    slug = "unauthenticated"


class PermissionDenied(CsmApiError):
    slug = "permission-denied"


class NotFound(CsmApiError):
    slug = "not-found"


class Conflict(CsmApiError):
    slug = "conflict"


class PreconditionFailed(CsmApiError):
    slug = "precondition-failed"


class PayloadTooLarge(CsmApiError):
    slug = "payload-too-large"


class ServiceUnavailable(CsmApiError):
    slug = "unavailable"


class TokenUnavailable(ServiceUnavailable):
    slug = "token-unavailable"


class Sealed(ServiceUnavailable):
    slug = "sealed"


class InternalError(CsmApiError):
    slug = "internal"


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


ERRORS_BY_SLUG: dict[str, type[CsmApiError]] = {c.slug: c for c in _all_subclasses(CsmApiError) if c.slug}
_BY_STATUS = {400: BadRequest, 401: Unauthenticated, 403: PermissionDenied, 404: NotFound, 409: Conflict,
              412: PreconditionFailed, 413: PayloadTooLarge, 422: ValidationFailed, 503: ServiceUnavailable}


def error_from_problem(status: int, doc: dict[str, Any] | None) -> CsmApiError:
    doc = doc or {}
    type_uri = str(doc.get("type", ""))
    slug = type_uri[len(PROBLEM_BASE):] if type_uri.startswith(PROBLEM_BASE) else ""
    cls = ERRORS_BY_SLUG.get(slug) or _BY_STATUS.get(status) or (InternalError if status >= 500 else CsmApiError)
    return cls(status, str(doc.get("title", "")), str(doc.get("detail", "")), doc)
