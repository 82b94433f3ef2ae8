"""Errors of the secrets feature: leaves of CsmError named after the condition.

Each leaf carries its problem slug, so the shell's single table maps it to a problem
document; ``detail`` never contains a value, only names and numbers.
"""
from __future__ import annotations

from typing import Any

from ..errors import BadRequest, Conflict, CsmError, NotFound


class SecretsError(CsmError):
    """Root of the secrets feature's errors."""


class InvalidName(SecretsError, BadRequest):
    problem = "bad-request"


class InvalidValues(SecretsError, BadRequest):
    problem = "bad-request"


class LimitExceeded(SecretsError):
    problem = "payload-too-large"


class DomainNotFound(SecretsError, NotFound):
    problem = "not-found"

    def __init__(self, domain: str) -> None:
        super().__init__(f"no domain named {domain!r}")
        self.domain = domain


class DomainExists(SecretsError, Conflict):
    problem = "conflict"

    def __init__(self, domain: str) -> None:
        super().__init__(f"a domain named {domain!r} already exists")
        self.domain = domain


class DomainNotEmpty(SecretsError, Conflict):
    problem = "conflict"

    def __init__(self, domain: str, count: int) -> None:
        super().__init__(f"domain {domain!r} still holds {count} secret(s); delete them or use force=true",
                         secrets=count)
        self.domain = domain


class SecretNotFound(SecretsError, NotFound):
    problem = "not-found"

    def __init__(self, domain: str, name: str) -> None:
        super().__init__(f"no secret named {name!r} in domain {domain!r}")
        self.domain, self.name = domain, name


class SecretExists(SecretsError, Conflict):
    problem = "conflict"

    def __init__(self, domain: str, name: str) -> None:
        super().__init__(f"a secret named {name!r} already exists in domain {domain!r}; update it instead")
        self.domain, self.name = domain, name


class VersionNotFound(SecretsError, NotFound):
    """The version does not exist, was deleted (soft) or destroyed; ``state`` says which."""

    problem = "not-found"

    def __init__(self, name: str, version: int, state: str = "absent", **ext: Any) -> None:
        what = {"deleted": "is deleted (undelete it to read it again)", "destroyed": "was destroyed",
                "absent": "does not exist"}[state]
        super().__init__(f"version {version} of secret {name!r} {what}", version=version, state=state, **ext)
        self.version, self.state = version, state


class CasMismatch(SecretsError, Conflict):
    """Check-and-set failed: the caller's expected version is stale."""

    problem = "conflict"

    def __init__(self, name: str, expected: int, current: int) -> None:
        super().__init__(f"check-and-set failed for {name!r}: expected version {expected}, current is {current}",
                         expected_version=expected, current_version=current)
        self.expected, self.current = expected, current


class ReferenceInvalid(SecretsError, NotFound):
    """A one-time reference is unknown, already used or expired (indistinguishable on purpose)."""

    problem = "not-found"

    def __init__(self) -> None:
        super().__init__("the reference is unknown, already used or expired")


class KeyUnavailable(SecretsError):
    """A domain's data key cannot be loaded into the token (master key missing or wrong)."""

    problem = "token-unavailable"


class RestoreRefused(SecretsError, BadRequest):
    problem = "bad-request"


class BackendUnavailable(SecretsError):
    problem = "unavailable"
