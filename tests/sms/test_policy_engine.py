"""The policy matcher itself: globs, specificity, deny."""
from __future__ import annotations

import pytest

from sms.auth.policy import Capability, InvalidPolicy, allowed, parse_policy

R, L, D = Capability.READ, Capability.LIST, Capability.DELETE


def pol(name, *rules):
    return parse_policy(name, [{"path": p, "capabilities": c} for p, c in rules])


def test_nothing_is_allowed_without_a_matching_rule():
    p = pol("p", ("secrets/a/x", ["read"]))
    assert not allowed([p], "secrets/a/y", R)
    assert not allowed([], "anything", R)


def test_trailing_star_matches_any_suffix_and_plus_one_segment():
    p = pol("p", ("secrets/a/*", ["read"]), ("secrets/+/meta", ["list"]))
    assert allowed([p], "secrets/a/x/y", R)
    assert allowed([p], "secrets/a/", R)
    assert not allowed([p], "secrets/b/x", R)
    assert allowed([p], "secrets/b/meta", L)
    assert not allowed([p], "secrets/b/c/meta", L)


def test_most_specific_rule_wins_within_a_policy():
    p = pol("p", ("secrets/*", ["read", "delete"]), ("secrets/prod/*", ["read"]))
    assert allowed([p], "secrets/dev/x", D)
    assert not allowed([p], "secrets/prod/x", D)


def test_deny_in_any_policy_wins():
    a = pol("a", ("secrets/*", ["read"]))
    b = pol("b", ("secrets/prod/*", ["deny"]))
    assert allowed([a, b], "secrets/dev/x", R)
    assert not allowed([a, b], "secrets/prod/x", R)


def test_root_allows_everything():
    assert allowed([], "sys/anything", D, root=True)


@pytest.mark.parametrize("name", ["", "UPPER", "a" * 65, "root", "sp ace"])
def test_bad_policy_names_are_refused(name):
    with pytest.raises(InvalidPolicy):
        pol(name, ("a", ["read"]))
