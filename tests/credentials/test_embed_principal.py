"""What an embed session may do: its user's role, minus what a session never holds, within
its key (the key's scopes as its creator holds them now)."""

from __future__ import annotations

from tidegate.core.principal import Principal
from tidegate.core.restrictions import KeyRestrictions
from tidegate.core.scopes import ALL_SCOPES, EMBED_SESSION_EXCLUDED, Scope, role_permissions
from tidegate.credentials import embed_sessions


def restrictions(scopes, bound_user_id=None) -> KeyRestrictions:
    return KeyRestrictions.of(
        key_id="key_1",
        org_id="org_1",
        creator_id="user_admin",
        scopes=scopes,
        access_policy_ids=None,
        source_scope=None,
        bound_user_id=bound_user_id,
        ip_allowlist=None,
        expires_at=None,
        rate_limit_per_minute=60,
    )


def session_principal(role: str, key_scopes, key_role: str = "admin") -> Principal:
    return Principal.for_embed_session(
        session_id="ses_1", user_id="user_x", role=role, key_role=key_role, key_restrictions=restrictions(key_scopes)
    )


def test_an_admins_session_holds_everything_but_the_excluded():
    principal = session_principal("admin", ["*"])
    assert principal.scopes == ALL_SCOPES - EMBED_SESSION_EXCLUDED
    assert {Scope.EMBED_SESSION_CREATE, Scope.KEYS_MANAGE, Scope.DASHBOARDS_WRITE} <= EMBED_SESSION_EXCLUDED
    assert principal.user_id == "user_x" and principal.key_id == "key_1"
    assert principal.actor_type == "user" and principal.actor_id == "user_x"
    assert principal.restrictions is not None and principal.restrictions.bound_user_id == "user_x"
    assert principal.restrictions.creator_id == "user_admin"  # rows stay within the key's creator


def test_a_session_never_exceeds_its_key_nor_its_keys_creator():
    assert session_principal("admin", ["data:read"]).scopes == {"data:read"}
    assert session_principal("member", ["*"]).scopes == role_permissions("member") - EMBED_SESSION_EXCLUDED
    # A key whose creator was demoted to member: the session loses the admin-only scopes too.
    demoted = session_principal("admin", ["*"], key_role="member")
    assert Scope.USERS_READ not in demoted.scopes and Scope.DATA_READ in demoted.scopes
    assert session_principal("admin", ["*"], key_role="gone").scopes == frozenset()


def test_token_format():
    token = embed_sessions.generate_token()
    assert token.startswith("es_") and len(token) == 46 and embed_sessions.is_well_formed(token)
    assert len({embed_sessions.generate_token() for _ in range(1000)}) == 1000
    assert not embed_sessions.is_well_formed(token[:-1]) and not embed_sessions.is_well_formed("qk_" + token[3:])
    assert [embed_sessions.clamp_ttl(t) for t in (None, 0, 900, 4000, 86_401)] == [3600, 900, 900, 4000, 86_400]
