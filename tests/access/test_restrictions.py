"""A key's restrictions are one immutable value (issue 9 §2), and the access layer never
reads a key's row: it is given that value."""

from __future__ import annotations

import ast
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import tidegate.access
from tidegate.core.principal import Principal
from tidegate.core.restrictions import KeyRestrictions, KeyTerms
from tidegate.errors import Forbidden

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _restrictions(**overrides) -> KeyRestrictions:
    values = dict(
        key_id="key_1",
        org_id="org_1",
        creator_id="usr_1",
        scopes=["data:read"],
        access_policy_ids=None,
        source_scope=None,
        bound_user_id=None,
        ip_allowlist=None,
        expires_at=None,
        rate_limit_per_minute=60,
    )
    return KeyRestrictions.of(**{**values, **overrides})


def _terms(**given) -> KeyTerms:
    values = {f.name: None for f in dataclasses.fields(KeyTerms)}
    return KeyTerms(**{**values, **given})


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_access_imports_nothing_from_credentials():
    """Every import, lazy ones inside functions included: access is given key restrictions."""
    root = Path(tidegate.access.__file__).parent
    offending = {
        str(path.relative_to(root)): sorted(n for n in _imports(path) if n.startswith("tidegate.credentials"))
        for path in root.rglob("*.py")
    }
    assert {path: names for path, names in offending.items() if names} == {}


def test_restrictions_are_an_immutable_hashable_value_not_sharing_stored_json():
    stored_ips, stored_scope, stored_policies = ["10.0.0.0/8"], {"mode": "selected", "source_ids": ["src_a"]}, ["pol_1"]
    value = _restrictions(ip_allowlist=stored_ips, source_scope=stored_scope, access_policy_ids=stored_policies)
    stored_ips.append("0.0.0.0/0")
    stored_scope["source_ids"].append("src_b")
    stored_policies.append("pol_2")
    assert value.ip_allowlist.networks == ("10.0.0.0/8",)
    assert value.source_selection.source_ids == frozenset({"src_a"})
    assert value.access_policy_ids == ("pol_1",)
    hash(value)  # usable in caches keyed by value
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.bound_user = None  # type: ignore[misc]


def test_principal_of_a_key_carries_its_restrictions():
    value = _restrictions(scopes=["data:read", "admin:keys:manage"])
    principal = Principal.for_key("member", value)
    assert principal.restrictions is value
    assert (principal.key_id, principal.user_id, principal.org_id) == ("key_1", "usr_1", "org_1")
    assert Principal.for_user("org_1", "usr_1", "member").restrictions is None


@pytest.mark.parametrize(
    ("client_ip", "allowed"),
    [("10.1.2.3", True), ("::ffff:10.1.2.3", True), ("11.0.0.1", False), (None, False), ("not-an-ip", False)],
)
def test_ip_allowlist_verify(client_ip, allowed):
    allowlist = _restrictions(ip_allowlist=["10.0.0.0/8"]).ip_allowlist
    if allowed:
        allowlist.verify(client_ip)
    else:
        with pytest.raises(Forbidden) as refused:
            allowlist.verify(client_ip)
        assert refused.value.code == "ip_not_allowed"


def test_no_ip_allowlist_allows_any_address():
    _restrictions().ip_allowlist.verify("203.0.113.9")
    _restrictions(ip_allowlist=[]).ip_allowlist.verify(None)


def test_source_selection_allows_only_selected_sources():
    selected = _restrictions(source_scope={"mode": "selected", "source_ids": ["src_a"]}).source_selection
    assert selected.allows("src_a") and not selected.allows("src_b")
    for scope in (None, {"mode": "all"}, {}):
        assert _restrictions(source_scope=scope).source_selection.allows("src_b")


def test_child_that_says_nothing_inherits_every_restriction():
    parent = _restrictions(
        access_policy_ids=["pol_1"],
        source_scope={"mode": "selected", "source_ids": ["src_a"]},
        bound_user_id="usr_2",
        ip_allowlist=["10.0.0.0/8"],
        expires_at=NOW,
        rate_limit_per_minute=30,
    )
    child = parent.bound(_terms())
    assert child == KeyTerms(
        rate_limit_per_minute=30,
        expires_at=NOW,
        ip_allowlist=["10.0.0.0/8"],
        source_scope={"mode": "selected", "source_ids": ["src_a"]},
        access_policy_ids=["pol_1"],
        bound_user_id="usr_2",
    )


def test_child_broader_than_parent_is_refused_naming_every_dimension():
    parent = _restrictions(
        access_policy_ids=["pol_1"],
        source_scope={"mode": "selected", "source_ids": ["src_a"]},
        bound_user_id="usr_2",
        ip_allowlist=["10.0.0.0/8"],
        expires_at=NOW,
        rate_limit_per_minute=30,
    )
    broader = _terms(
        rate_limit_per_minute=31,
        expires_at=NOW + timedelta(seconds=1),
        ip_allowlist=["10.0.0.0/7"],
        source_scope={"mode": "all"},
        access_policy_ids=[],
        bound_user_id="usr_3",
    )
    with pytest.raises(Forbidden) as refused:
        parent.bound(broader)
    assert refused.value.code == "exceeds_parent_key"
    for name in (
        "rate_limit_per_minute",
        "expires_in_days",
        "ip_allowlist",
        "source_scope",
        "access_policy_ids",
        "bound_user_id",
    ):
        assert name in refused.value.message


def test_child_within_parent_keeps_its_narrower_terms():
    parent = _restrictions(
        source_scope={"mode": "selected", "source_ids": ["src_a", "src_b"]},
        ip_allowlist=["10.0.0.0/8"],
        expires_at=NOW,
        rate_limit_per_minute=30,
    )
    narrower = _terms(
        rate_limit_per_minute=5,
        expires_at=NOW - timedelta(days=1),
        ip_allowlist=["10.1.0.0/16"],
        source_scope={"mode": "selected", "source_ids": ["src_b"]},
    )
    assert parent.bound(narrower) == narrower


def test_a_key_principal_without_its_restrictions_sees_nothing(world):
    """A Principal that names a key but was not built from it (Principal.for_key) could
    otherwise pass for its creator: it opens no source and lists none."""
    from tidegate.access import sources
    from tidegate.catalog.models import Source
    from tidegate.errors import NotFound

    user = world.user(role="admin")
    with world.tx() as s:
        s.add(Source(id="src_own", org_id=world.id, name="s", created_by=user, service="api"))
    as_user = Principal.for_user(world.id, user, "admin")
    forged = dataclasses.replace(as_user, key_id="key_x")
    with world.tx() as s:
        assert [src.id for src in s.scalars(sources.visible_sources_query(s, as_user))] == ["src_own"]
        assert sources.open_source(s, as_user, "src_own", with_filter=False).source.id == "src_own"
        assert s.scalars(sources.visible_sources_query(s, forged)).all() == []
        with pytest.raises(NotFound):
            sources.open_source(s, forged, "src_own", with_filter=False)


def test_a_principal_whose_user_row_is_gone_opens_no_source(world):
    """Fail closed: no user row to judge visibility by means nothing visible (never a 500)."""
    from tidegate.access import sources
    from tidegate.catalog.models import Source
    from tidegate.errors import NotFound

    user = world.user(role="admin")
    with world.tx() as s:
        s.add(Source(id="src_gone", org_id=world.id, name="s", created_by=user, service="api"))
    ghost = Principal.for_user(world.id, "usr_no_such_user", "admin")
    with world.tx() as s:
        assert s.scalars(sources.visible_sources_query(s, ghost)).all() == []
        with pytest.raises(NotFound):
            sources.open_source(s, ghost, "src_gone", with_filter=False)


def test_unrestricted_access_opens_no_source_to_show_or_change():
    """`opened_source` is for callers who opened a source; every-row access has none."""
    from tidegate.access import sources
    from tidegate.catalog.snapshots import VersionSnapshot

    version = VersionSnapshot(
        id="ver_1", source_id="src_1", org_id="org_1", created_at=None, row_count=0, column_types=(), parts=()
    )
    access = sources.unrestricted_access(version, reason="test")
    with pytest.raises(TypeError):
        access.opened_source


def test_an_ip_allowlist_bounds_a_child_within_the_same_ip_version_only():
    parent = _restrictions(ip_allowlist=["10.0.0.0/8", "2001:db8::/32"]).ip_allowlist
    assert parent.within(["10.1.0.0/16", "2001:db8:1::/48"])
    assert not parent.within(["11.0.0.0/8"])
    assert not parent.within(["::/0"])  # a v6 range is never inside a v4 one, nor wider than its parent
    assert not _restrictions(ip_allowlist=["10.0.0.0/8"]).ip_allowlist.within(["::ffff:10.0.0.0/104"])
