"""Errors of the CMP service layer: leaves of CsmError named after the condition. Protocol
failures are not here: they are answered inside CMP (``client_sdk.cmp.errors``)."""
from __future__ import annotations

from ..errors import BadRequest, Conflict, CsmError, NotFound, ServiceUnavailable


class CmpServiceError(CsmError):
    """Root of the CMP service layer's errors."""


class CmpProfileNotFound(CmpServiceError, NotFound):
    problem = "not-found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no CMP profile named {name!r}")
        self.name = name


class CmpProfileExists(CmpServiceError, Conflict):
    problem = "conflict"

    def __init__(self, name: str) -> None:
        super().__init__(f"a CMP profile named {name!r} already exists")
        self.name = name


class InvalidCmpProfile(CmpServiceError, BadRequest):
    problem = "bad-request"


class CmpRequestNotFound(CmpServiceError, NotFound):
    problem = "not-found"

    def __init__(self, profile: str, transaction_id: str) -> None:
        super().__init__(f"no CMP request {transaction_id} in profile {profile!r}")


class CmpRequestNotPending(CmpServiceError, Conflict):
    problem = "conflict"

    def __init__(self, profile: str, transaction_id: str, state: str) -> None:
        super().__init__(f"CMP request {transaction_id} in profile {profile!r} is {state}, not pending approval",
                         state=state)


class CmpUnavailable(CmpServiceError, ServiceUnavailable):
    problem = "unavailable"
