"""Policies: named rule sets mapping path patterns to capabilities. Deny by default.

Pattern grammar (as in Vault/OpenBao): segments separated by ``/``; ``+`` matches exactly one
segment; a trailing ``*`` matches any suffix (including the empty one). The most specific
matching rule wins (longest literal prefix, then fewest wildcards); ``deny`` in the winning
rule refuses everything. With several policies, the capabilities of each policy's winning
rule are united, and an explicit ``deny`` anywhere wins.
"""
from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROOT_POLICY = "root"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.@:=-]+$")


class Capability(enum.Enum):
    CREATE = "create"
    READ = "read"
    UPDATE = "update"
    DELETE = "delete"
    LIST = "list"
    SIGN = "sign"
    REVOKE = "revoke"
    SUDO = "sudo"
    DENY = "deny"


class InvalidPolicy(ValueError):
    """A policy document is malformed; the message says where."""


@dataclass(frozen=True)
class Rule:
    pattern: str
    capabilities: frozenset[Capability]

    def matches(self, path: str) -> bool:
        pat = self.pattern.split("/")
        segs = path.split("/")
        if pat[-1] == "*":
            prefix = pat[:-1]
            if len(segs) < len(prefix):
                return False
            return _segments_match(prefix, segs[: len(prefix)])
        if pat[-1].endswith("*"):
            # "secrets/db*" : last segment is a literal prefix
            head, last = pat[:-1], pat[-1][:-1]
            if len(segs) < len(pat):
                return False
            return _segments_match(head, segs[: len(head)]) and "/".join(segs[len(head):]).startswith(last)
        return len(pat) == len(segs) and _segments_match(pat, segs)

    @property
    def specificity(self) -> tuple[int, int]:
        literal = len(self.pattern.split("*")[0].split("+")[0])
        return (literal, -self.pattern.count("+"))


def _segments_match(pattern: Sequence[str], segs: Sequence[str]) -> bool:
    return all(p == "+" or p == s for p, s in zip(pattern, segs, strict=True))


@dataclass(frozen=True)
class Policy:
    name: str
    rules: tuple[Rule, ...]

    def winning_rule(self, path: str) -> Rule | None:
        matching = [r for r in self.rules if r.matches(path)]
        return max(matching, key=lambda r: r.specificity) if matching else None

    def to_document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rules": [
                {"path": r.pattern, "capabilities": sorted(c.value for c in r.capabilities)} for r in self.rules
            ],
        }


def parse_policy(name: str, rules: Any) -> Policy:
    """Validate and build a policy from its JSON form ``[{"path": ..., "capabilities": [...]}, ...]``."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidPolicy("policy name must be 1-64 characters of a-z, 0-9, '_', '.', '-'")
    if name == ROOT_POLICY:
        raise InvalidPolicy("the root policy is built in and cannot be written")
    if not isinstance(rules, list) or not rules:
        raise InvalidPolicy("rules must be a non-empty list")
    if len(rules) > 256:
        raise InvalidPolicy("a policy has at most 256 rules")
    out: list[Rule] = []
    for i, r in enumerate(rules):
        if not isinstance(r, Mapping) or set(r) != {"path", "capabilities"}:
            raise InvalidPolicy(f"rules[{i}] must have exactly 'path' and 'capabilities'")
        path, caps = r["path"], r["capabilities"]
        if not isinstance(path, str) or not 0 < len(path) <= 512 or path.startswith("/"):
            raise InvalidPolicy(f"rules[{i}].path must be a relative path of 1-512 characters")
        for j, seg in enumerate(path.split("/")):
            last = j == len(path.split("/")) - 1
            if seg in ("+",) or (last and seg == "*"):
                continue
            body = seg[:-1] if last and seg.endswith("*") else seg
            if not body or not _SEGMENT_RE.match(body):
                raise InvalidPolicy(f"rules[{i}].path has an invalid segment {seg!r}")
        if not isinstance(caps, list) or not caps:
            raise InvalidPolicy(f"rules[{i}].capabilities must be a non-empty list")
        try:
            capset = frozenset(Capability(c) for c in caps)
        except (ValueError, TypeError):
            allowed = ", ".join(c.value for c in Capability)
            raise InvalidPolicy(f"rules[{i}].capabilities: allowed values are {allowed}") from None
        out.append(Rule(path, capset))
    return Policy(name, tuple(out))


def allowed(policies: Iterable[Policy], path: str, capability: Capability, *, root: bool = False) -> bool:
    """Deny by default; ``root`` grants everything."""
    if root:
        return True
    granted: set[Capability] = set()
    for pol in policies:
        rule = pol.winning_rule(path)
        if rule is None:
            continue
        if Capability.DENY in rule.capabilities:
            return False
        granted |= rule.capabilities
    return capability in granted
