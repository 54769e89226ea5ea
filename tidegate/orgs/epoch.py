"""The organization's access epoch: the version of everything that decides access in it.

Caches of access decisions (access.sources, the key cache) are keyed by the epoch read live
with the key on every request. A change that can alter what anyone may see (a key, a user,
a role, a policy, a group, a share, a new version of a source) calls `bump_access_epoch` in
its own transaction, so the very next request, in every process and on every node, misses
those caches. Bumping too often costs a cache miss; too rarely, a stale answer: when in
doubt, bump.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from tidegate.orgs.models import Organization


def bump_access_epoch(session: Session, org_id: str) -> None:
    session.execute(
        update(Organization)
        .where(Organization.id == org_id)
        .values(access_epoch=Organization.access_epoch + 1)
        .execution_options(synchronize_session=False)
    )
