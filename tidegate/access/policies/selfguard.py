"""A key never loosens what restricts it.

A key's rows are filtered by its own access policies AND its creator's AND its bound user's
(resolution), and policies on one column OR their values. A key holding
`admin:policies:write` could otherwise edit or delete one of those policies, assign those
users more policies or unassign them, change their groups, or switch deny-by-default off,
and read more rows on its next request. Its creator may still make
such a change (in the web UI, or with a key those policies do not restrict): only the
restricted caller itself is refused, with 403 `own_restriction`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidegate.access.models import GroupMember
from tidegate.access.policies.resolution import _load_user_policies, _subject_state
from tidegate.core.principal import Principal
from tidegate.errors import Forbidden


@dataclass(frozen=True)
class OwnRestrictions:
    """What filters one key's rows now: its subjects (creator, bound user, session user),
    every policy that applies to it, and the groups its subjects are in."""

    subjects: frozenset[str]
    policy_ids: frozenset[str]
    group_ids: frozenset[str]
    unpolicied_subject: bool  # some subject has no policy: deny-by-default restricts it
    # Giving a subject more policies can only narrow while none applies and deny-by-default
    # is off (from every row to some); otherwise it may widen (OR on a column, or from none).
    more_policies_may_widen: bool


def own_restrictions(session: Session, actor: Principal | None) -> OwnRestrictions | None:
    """None for a caller that is not a key (the operator CLI, a person in the web UI)."""
    if actor is None or actor.key_id is None or actor.restrictions is None:
        return None
    restrictions = actor.restrictions
    subjects = {restrictions.creator_id, actor.user_id}
    if restrictions.bound_user.user_id is not None:
        subjects.add(restrictions.bound_user.user_id)
    policy_ids = set(restrictions.access_policy_ids)
    unpolicied = policied = False
    for user_id in subjects:
        policies = _load_user_policies(session, actor.org_id, user_id)
        unpolicied = unpolicied or not policies
        policied = policied or bool(policies)
        policy_ids.update(policy.id for policy in policies)
    group_ids = set(session.scalars(select(GroupMember.group_id).where(GroupMember.user_id.in_(subjects))))
    deny_by_default, _ = _subject_state(session, actor.org_id, actor.user_id)
    return OwnRestrictions(
        frozenset(subjects), frozenset(policy_ids), frozenset(group_ids), unpolicied, policied or deny_by_default
    )


def refuse_loosening(
    session: Session,
    actor: Principal | None,
    *,
    policy_id: str | None = None,
    user_ids: Iterable[str] = (),
    group_id: str | None = None,
    adding: bool = False,
    deny_by_default_off: bool = False,
) -> None:
    """403 `own_restriction` if the change could widen what `actor`'s own key reads.

    `policy_id`: a policy changed or deleted; `user_ids` / `group_id`: users or a group whose
    policies change, losing some (`adding` False) or gaining some (`adding` True)."""
    own = own_restrictions(session, actor)
    if own is None:
        return
    if adding and not own.more_policies_may_widen:
        return  # only narrows: from every row to those of the new policies
    if policy_id is not None and policy_id in own.policy_ids:
        what = "this policy filters the rows this key reads"
    elif not own.subjects.isdisjoint(user_ids):
        what = "this user's policies filter the rows this key reads (its creator or bound user)"
    elif group_id is not None and group_id in own.group_ids:
        what = "this group's policies filter the rows this key reads"
    elif deny_by_default_off and own.unpolicied_subject:
        what = "deny-by-default is what restricts this key"
    else:
        return
    raise Forbidden(
        "own_restriction",
        f"A key cannot loosen what restricts it: {what}. Make this change in the web UI or with a key "
        "these policies do not restrict.",
    )
