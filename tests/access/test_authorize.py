"""authorize(): the one decision of what a principal may do. Each test tries to get past it."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import tidegate
from tidegate.access.authorize import AnyOf, Rule, allowed, authorize
from tidegate.core.principal import Principal
from tidegate.core.restrictions import KeyRestrictions
from tidegate.core.scopes import ALL_SCOPES, ROLE_ADMIN, ROLE_MEMBER, ROLE_PERMISSIONS, Scope, validate_scopes
from tidegate.errors import Forbidden, InvalidRequest


def key_of(role: str, granted: list[str]) -> Principal:
    restrictions = KeyRestrictions.of(
        key_id="key_1",
        org_id="org_1",
        creator_id="usr_1",
        scopes=granted,
        access_policy_ids=None,
        source_scope=None,
        bound_user_id=None,
        ip_allowlist=None,
        expires_at=None,
        rate_limit_per_minute=60,
    )
    return Principal.for_key(role, restrictions)


def refusal(principal: Principal, action, resource=None) -> Forbidden:
    with pytest.raises(Forbidden) as caught:
        authorize(principal, action, resource)
    assert not allowed(principal, action, resource)
    return caught.value


def test_a_key_may_use_a_scope_it_and_its_creator_hold():
    principal = key_of(ROLE_ADMIN, [Scope.USERS_READ])
    authorize(principal, Scope.USERS_READ)
    assert allowed(principal, Scope.USERS_READ)


def test_a_scope_the_key_was_not_granted_is_refused_even_for_an_admin_creator():
    error = refusal(key_of(ROLE_ADMIN, [Scope.DATA_READ]), Scope.DATA_WRITE)
    assert (error.code, error.message) == ("insufficient_scope", "This request requires the 'data:write' scope.")


def test_creator_demoted_after_key_creation_loses_the_admin_scopes_of_the_key():
    # Granted while its creator was an admin; the creator is a member now.
    principal = key_of(ROLE_MEMBER, [Scope.USERS_WRITE, Scope.DATA_READ])
    error = refusal(principal, Scope.USERS_WRITE)
    assert error.code == "insufficient_scope"
    assert error.message == (
        "This key's creator (role member) no longer has the 'admin:users:write' permission; the key cannot use it."
    )
    authorize(principal, Scope.DATA_READ)  # what a member still holds keeps working


def test_wildcard_is_every_scope_but_never_more_than_the_creator_holds_now():
    admin_key = key_of(ROLE_ADMIN, ["*"])
    for scope in Scope:
        authorize(admin_key, scope)
    member_key = key_of(ROLE_MEMBER, ["*"])
    assert member_key.scopes == ROLE_PERMISSIONS[ROLE_MEMBER]
    assert refusal(member_key, Scope.ORG_WRITE).code == "insufficient_scope"
    assert refusal(member_key, Scope.AUDIT_READ).code == "insufficient_scope"


def test_unknown_scope_strings_grant_nothing_and_are_refused_in_requests():
    principal = key_of(ROLE_ADMIN, ["admin:everything", "data:read"])
    assert principal.scopes == {Scope.DATA_READ}
    with pytest.raises(ValueError):
        Scope("admin:everything")  # cannot even be named as an action
    with pytest.raises(InvalidRequest) as caught:
        validate_scopes(["data:read", "admin:everything"])
    assert caught.value.code == "invalid_scope"
    assert caught.value.message.startswith("Unknown scope(s): admin:everything. Valid scopes: ")


@pytest.mark.parametrize(
    "scope",
    [Scope.USERS_READ, Scope.USERS_WRITE, Scope.POLICIES_WRITE, Scope.AUDIT_READ, Scope.ORG_WRITE, Scope.USAGE_READ],
)
def test_a_member_is_refused_admin_only_scopes(scope):
    member = Principal.for_user("org_1", "usr_1", ROLE_MEMBER)
    assert refusal(member, scope).message == f"This request requires the '{scope}' scope."


@pytest.mark.parametrize("rule", [Rule.CREATE_CONNECTOR, Rule.CONFIGURE_CONNECTOR])
def test_a_member_is_refused_admin_only_rules_even_with_every_member_scope(rule):
    member = key_of(ROLE_MEMBER, ["*"])
    assert refusal(member, rule).code == "admin_required"
    authorize(Principal.for_user("org_1", "usr_2", ROLE_ADMIN), rule)


def test_any_of_needs_one_scope_held_now():
    principal = key_of(ROLE_MEMBER, [Scope.FILES_UPLOAD])
    authorize(principal, AnyOf(Scope.FILES_WRITE, Scope.FILES_UPLOAD))
    error = refusal(principal, AnyOf(Scope.FILES_WRITE, Scope.FILES_DELETE))
    assert error.message == "This request requires one of the scopes: admin:files:write, admin:files:delete."
    demoted = key_of(ROLE_MEMBER, [Scope.USERS_READ])
    refusal(demoted, AnyOf(Scope.USERS_READ, Scope.ORG_READ))


def test_only_the_creator_of_a_key_may_rotate_it_not_even_an_admin():
    key = SimpleNamespace(created_by="usr_1")
    authorize(Principal.for_user("org_1", "usr_1", ROLE_MEMBER), Rule.ROTATE_KEY, key)
    admin = Principal.for_user("org_1", "usr_2", ROLE_ADMIN)
    assert refusal(admin, Rule.ROTATE_KEY, key).code == "not_key_owner"
    assert refusal(admin, Rule.ROTATE_KEY).code == "not_key_owner"  # no resource: nothing to own


def test_scope_values_are_the_wire_strings():
    assert {str(s) for s in Scope} == set(ALL_SCOPES) and len(ALL_SCOPES) == 24
    assert Scope.KEYS_MANAGE == "admin:keys:manage" and f"{Scope.DATA_READ}" == "data:read"


def test_no_scope_string_literal_outside_access_scopes():
    """Code names scopes as Scope members; the strings live in core/scopes.py alone."""
    package = Path(tidegate.__file__).parent
    quoted = re.compile("|".join(rf"""["']{re.escape(scope)}["']""" for scope in Scope))
    offenders = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*"))
        if path.suffix in (".py", ".html", ".js") and path != package / "core" / "scopes.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if quoted.search(line)
    ]
    assert offenders == []
