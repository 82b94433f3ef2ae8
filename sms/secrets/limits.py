"""Input validation and the documented limits.

| limit | value |
|---|---|
| domain name | 1-64 characters: ``A-Z a-z 0-9 _ . -``, starting with a letter or digit, no ``..`` |
| secret name | 1-128 characters, same alphabet and rules |
| key (inside a secret) | 1-256 characters, any printable Unicode except control characters |
| value | a JSON string, number (finite) or boolean; strings at most 64 KiB (UTF-8) |
| pairs per secret | 1-256 |
| serialised secret | at most 64 KiB of compact JSON |
| versions kept | 1-100 per secret (default ``secrets_max_versions``, 10) |
| request body | ``max_body_bytes`` (1 MiB) |

Names are ASCII on purpose: they appear in policy paths, URLs, audit entries and the
associated data of every ciphertext, and must mean the same thing everywhere.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

from .errors import InvalidName, InvalidValues, LimitExceeded

DOMAIN_NAME_MAX: Final = 64
SECRET_NAME_MAX: Final = 128
KEY_MAX: Final = 256
PAIRS_MAX: Final = 256
VALUES_MAX_BYTES: Final = 65536
VERSIONS_MAX: Final = 100
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Values = dict[str, str | int | float | bool]


def check_name(name: Any, *, kind: str = "secret") -> str:
    """Return ``name`` if valid; InvalidName with a precise reason otherwise."""
    if type(name) is str and name in _VALID[kind == "domain"]:  # checked before (the hot path)
        return name
    _check_name(name, kind)
    valid = _VALID[kind == "domain"]
    if len(valid) >= _VALID_MAX:
        valid.clear()
    valid.add(name)
    return name


# Names that passed check_name, by kind (domain or not): a set lookup instead of the checks on
# every request. Only valid names enter; bounded (cleared when full).
_VALID: tuple[set[str], set[str]] = (set(), set())
_VALID_MAX: Final = 65536


def _check_name(name: Any, kind: str) -> None:
    limit = DOMAIN_NAME_MAX if kind == "domain" else SECRET_NAME_MAX
    if not isinstance(name, str):
        raise InvalidName(f"{kind} name must be a string")
    if not name:
        raise InvalidName(f"{kind} name must not be empty")
    if len(name) > limit:
        raise InvalidName(f"{kind} name is longer than {limit} characters")
    if "/" in name:
        raise InvalidName(f"{kind} name must not contain '/'")
    if not name.isascii():
        raise InvalidName(f"{kind} name must be ASCII (A-Z, a-z, 0-9, '_', '.', '-')")
    if name in (".", "..") or ".." in name:
        raise InvalidName(f"{kind} name must not be '.' or '..' or contain '..'")
    if not _NAME_RE.match(name):
        raise InvalidName(f"{kind} name must start with a letter or digit and use only A-Z, a-z, 0-9, '_', '.', '-'")


def check_values(values: Any, *, allow_null: bool = False) -> dict[str, Any]:
    """Validate a secret's key/value map (``allow_null``: a merge patch may remove keys with null)."""
    if not isinstance(values, Mapping):
        raise InvalidValues("values must be a JSON object of key/value pairs")
    if not values and not allow_null:
        raise InvalidValues("values must hold at least one pair")
    if len(values) > PAIRS_MAX:
        raise LimitExceeded(f"a secret holds at most {PAIRS_MAX} pairs", limit=PAIRS_MAX)
    for k, v in values.items():
        if not isinstance(k, str) or not k or len(k) > KEY_MAX or _CONTROL_RE.search(k):
            raise InvalidValues(f"keys must be 1-{KEY_MAX} characters without control characters")
        if v is None and allow_null:
            continue
        if isinstance(v, bool) or isinstance(v, str):
            if isinstance(v, str) and len(v) > VALUES_MAX_BYTES:
                raise LimitExceeded(f"a value is at most {VALUES_MAX_BYTES} bytes", limit=VALUES_MAX_BYTES)
            continue
        if isinstance(v, int):
            if abs(v) > 2**63:
                raise InvalidValues(f"the number under key {_show(k)} is out of range")
            continue
        if isinstance(v, float):
            if not math.isfinite(v):
                raise InvalidValues(f"the number under key {_show(k)} is not finite")
            continue
        kind = "object" if isinstance(v, Mapping) else "array" if isinstance(v, list) else \
            "null" if v is None else type(v).__name__
        raise InvalidValues(f"the value under key {_show(k)} is a JSON {kind}; "
                            "values must be strings, numbers or booleans", key=_show(k))
    return dict(values)


def encode_values(values: Mapping[str, Any]) -> bytes:
    """Canonical plaintext of a secret (compact JSON, keys sorted); LimitExceeded if too large."""
    raw = json.dumps(values, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    if len(raw) > VALUES_MAX_BYTES:
        raise LimitExceeded(f"a secret is at most {VALUES_MAX_BYTES} bytes of JSON", limit=VALUES_MAX_BYTES)
    return raw


def check_max_versions(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= VERSIONS_MAX:
        raise InvalidValues(f"max_versions must be an integer between 1 and {VERSIONS_MAX}")
    return n


def check_version(n: Any, field: str = "version") -> int:
    if isinstance(n, str) and n.isdigit() and len(n) < 12:
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n < 2**31:
        raise InvalidValues(f"{field} must be a positive integer")
    return n


def _show(key: str) -> str:
    return repr(key[:40])
