"""The least-privilege search: the fewest scopes meeting every check a key's requests passed."""

from __future__ import annotations

from tidegate.credentials.insights import smallest_cover


def test_single_scope_checks_are_taken_as_they_are():
    assert smallest_cover(set()) == []
    assert smallest_cover({("data:read",), ("admin:users:read",)}) == ["admin:users:read", "data:read"]


def test_an_any_of_check_met_by_a_needed_scope_adds_nothing():
    checks = {("data:read",), ("admin:sources:read", "data:read")}
    assert smallest_cover(checks) == ["data:read"]


def test_an_any_of_check_alone_takes_its_first_alternative():
    assert smallest_cover({("admin:sources:read", "data:read")}) == ["admin:sources:read"]
    assert smallest_cover({("data:write", "admin:sources:write")}) == ["data:write"]


def test_one_scope_shared_by_several_any_of_checks_beats_one_per_check():
    checks = {("admin:sources:write", "data:write"), ("data:write", "admin:files:write"), ("data:read",)}
    assert smallest_cover(checks) == ["data:read", "data:write"]
    # Two checks with nothing in common: one scope each (each check's first alternative).
    checks = {("admin:files:write", "admin:files:upload"), ("admin:sources:read", "data:read")}
    assert smallest_cover(checks) == ["admin:files:write", "admin:sources:read"]
