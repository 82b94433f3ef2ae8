"""The one table mapping CA engine errors to problem documents (RFC 9457).

``detail`` is the engine's message (names, serials, violated rules; never key material or a
password); a few errors add members: ``violations`` (what the profile rule broke), ``problems``
(what is wrong with a profile definition), ``field``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import ca

from ..errors import CsmError, register_exception


class PayloadTooLarge(CsmError):
    problem = "payload-too-large"


class UnsupportedMediaType(CsmError):
    problem = "unsupported-media-type"


class NotAcceptable(CsmError):
    problem = "not-acceptable"


def _violations(exc: Any) -> dict[str, Any]:
    return {"profile": exc.profile, "violations": [v.as_dict() for v in exc.violations]}


# (engine error, problem slug, extra members of the problem document). Order matters: leaves
# before their bases (KeyMismatch before InvalidCaMaterial, CsrSignatureInvalid before InvalidCsr).
CA_PROBLEMS: Final[list[tuple[type[ca.CaError], str, Callable[[Any], dict[str, Any]] | None]]] = [
    (ca.CaNotFound, "not-found", lambda e: {"ca": e.name}),
    (ca.ProfileNotFound, "not-found", lambda e: {"ca": e.ca_name, "profile_name": e.name}),
    (ca.UnknownSerial, "not-found", lambda e: {"serial": f"{e.serial:x}"}),
    (ca.CaExists, "conflict", lambda e: {"ca": e.name}),
    (ca.AlreadyRevoked, "conflict", lambda e: {"serial": f"{e.serial:x}", "reason": e.reason}),
    (ca.NotOnHold, "conflict", lambda e: {"serial": f"{e.serial:x}"}),
    (ca.ConcurrentUpdate, "conflict", None),
    (ca.NotCertificateOwner, "permission-denied", None),
    (ca.ProfileViolation, "validation", _violations),
    (ca.InvalidProfile, "validation", lambda e: {"problems": list(e.problems)}),
    (ca.CsrSignatureInvalid, "bad-request", lambda e: {"field": "csr"}),
    (ca.InvalidCsr, "bad-request", lambda e: {"field": "csr"}),
    (ca.KeyMismatch, "bad-request", None),
    (ca.InvalidCaMaterial, "bad-request", None),
    (ca.InvalidRequest, "bad-request", lambda e: {"field": e.field}),
    (ca.CaNotUsable, "conflict", lambda e: {"ca": e.name}),
    (ca.SerialExhausted, "unavailable", None),
    (ca.DuplicateSerial, "unavailable", None),
]


def problem_extensions(exc: ca.CaError) -> dict[str, Any]:
    for exc_type, _slug, ext in CA_PROBLEMS:
        if isinstance(exc, exc_type):
            return ext(exc) if ext else {}
    return {}


_registered = False


def register() -> None:
    """Add the table to the service's exception table once (register_exception prepends, so
    the catch-all goes in first and the leaves last, in reverse order)."""
    global _registered
    if _registered:
        return
    register_exception(ca.CaError, "bad-request")
    for exc_type, slug, _ext in reversed(CA_PROBLEMS):
        register_exception(exc_type, slug)
    _registered = True


__all__ = ["CA_PROBLEMS", "NotAcceptable", "PayloadTooLarge", "UnsupportedMediaType", "problem_extensions", "register"]
