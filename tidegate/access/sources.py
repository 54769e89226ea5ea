"""Who may open which source, and with which row filter.

Sharing decides WHO may open a source at all; policies then decide WHICH ROWS they see.
- A source is private to its creator until shared with users (view or edit) or with the
  whole organization; admins see and manage every source of their organization.
- A key sees only the sources its creator (and its bound user, if set) may open now,
  narrowed by its own `source_scope`; anything else answers 404 and is absent from lists.
- The row filter of a key is its creator's policies AND its own access_policy_ids AND its
  bound user's policies (access.policies.resolve_key_filter).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import InitVar, dataclass, replace

from sqlalchemy import ColumnElement, Select, exists, false, or_, select
from sqlalchemy.orm import Session

from tidegate import metrics
from tidegate.access import policies
from tidegate.caching import LRUCache
from tidegate.catalog.models import Source, SourceShare, SourceVersion
from tidegate.catalog.snapshots import SourceSnapshot, VersionSnapshot
from tidegate.core.principal import Principal
from tidegate.core.restrictions import SourceSelection
from tidegate.core.rowfilter import RowFilter
from tidegate.core.scopes import ROLE_ADMIN
from tidegate.errors import Forbidden, NotFound
from tidegate.orgs.models import User

VIEW, EDIT, OWNER = "view", "edit", "owner"
_RANK: dict[str | None, int] = {None: 0, VIEW: 1, EDIT: 2, OWNER: 3}


def at_least(permission: str | None, need: str) -> bool:
    """Whether `permission` (view, edit, owner or None) grants `need`."""
    return _RANK[permission] >= _RANK[need]


def weakest(permissions: list[str]) -> str:
    """A caller acting for several users (a key, a session) gets the weakest of theirs."""
    return min(permissions, key=lambda p: _RANK[p])


# Read access decisions of keys, per (org, access epoch, key, creator role, source). Every
# audited change bumps the organization's epoch (audit.record), and the epoch is read live
# with the key on each request, so an entry is never used after any change: revocations,
# policy edits, shares, role changes and new source versions all take effect on the very
# next request, in every process. Keys whose state is read live (revoked, expired, owner
# inactive) are refused before this cache is consulted. It holds frozen snapshots only: the
# request that filled it may fail and roll its session back, and the next must not care.
_CACHE_ENTRIES = 10_000
_cache: LRUCache[tuple[Hashable, ...], SourceAccess] = LRUCache(_CACHE_ENTRIES, name="source access cache")


@dataclass(frozen=True)
class _Opened:
    """The mark of a SourceAccess this module built (a frozen value: caches hold it)."""


_OPENED = _Opened()


@dataclass(frozen=True)
class SourceAccess:
    """What one caller may do with one source now, and the ONLY value `data.engine` reads
    rows with: the version, the row filter and the visible columns travel together.

    Only this module builds one (`open_source`; `unrestricted_access` for the few checks
    that must see every row, each listed in tests/test_security_capability.py): anything
    else is refused at construction. `narrowed` can only take rows away. Values only (no
    ORM objects): to change the source, load its row in your own session with `source_row`.
    """

    source: SourceSnapshot | None  # None only for `unrestricted_access` (no caller, no source row)
    version: VersionSnapshot | None
    permission: str  # view | edit | owner (admins count as owner)
    row_filter: RowFilter
    # Init-only, not a field: `dataclasses.replace` does not carry it over, so a copy with
    # another (wider) row filter is refused like any other construction.
    _grant: InitVar[_Opened | None] = None

    def __post_init__(self, _grant: _Opened | None) -> None:
        if _grant is not _OPENED:
            raise TypeError(
                "A SourceAccess is the capability to read rows: only access.sources builds one (open_source)."
            )
        if not isinstance(self.row_filter, RowFilter):
            raise TypeError("row_filter must be a tidegate.core.rowfilter.RowFilter")

    @property
    def opened_source(self) -> SourceSnapshot:
        """The source the caller opened (TypeError for `unrestricted_access`, which opens none)."""
        if self.source is None:
            raise TypeError("an unrestricted_access opens no source: there is none to show or change")
        return self.source

    @property
    def columns(self) -> list[str]:
        """The names of the columns the caller sees (hidden ones are absent; masked ones are
        listed: their values are masked), in the version's order."""
        return [name for name, _ in self.column_types]

    @property
    def column_types(self) -> tuple[tuple[str, str], ...]:
        """(name, type) of the columns the caller sees: what every metadata path shows."""
        if self.version is None:
            return ()
        hidden = self.row_filter.column_rules.hidden
        return tuple(c for c in self.version.column_types if c[0] not in hidden)

    @property
    def visible_columns(self) -> list[dict[str, str]]:
        """`[{"name", "type"}]` of the columns the caller sees (a fresh list)."""
        return [{"name": name, "type": kind} for name, kind in self.column_types]

    @property
    def masked_columns(self) -> frozenset[str]:
        return self.row_filter.column_rules.masked

    def narrowed(self, row_filter: RowFilter) -> SourceAccess:
        """This access with only the rows that ALSO pass `row_filter` (never more rows)."""
        if not isinstance(row_filter, RowFilter):
            raise TypeError("row_filter must be a tidegate.core.rowfilter.RowFilter")
        if row_filter == self.row_filter:
            return self
        return replace(self, row_filter=self.row_filter.both(row_filter), _grant=_OPENED)


def _granted(
    source: SourceSnapshot | None, version: VersionSnapshot | None, permission: str, row_filter: RowFilter
) -> SourceAccess:
    return SourceAccess(source=source, version=version, permission=permission, row_filter=row_filter, _grant=_OPENED)


def unrestricted_access(version: VersionSnapshot, *, reason: str) -> SourceAccess:
    """Every row of `version`, for no caller: tests only today (no code of tidegate's calls
    it), never a caller's read. Greppable on purpose; tests/security/test_security_capability.py
    refuses any use in tidegate/ or bench/ that it does not list.
    `reason` says why (for the reader of the call)."""
    if not reason:
        raise ValueError("say why every row is read")
    return _granted(None, version, OWNER, RowFilter(clauses=()))


def _user_may_see(user: User) -> ColumnElement[bool]:
    """SQL condition: `user` may open the source (visibility only, not rows)."""
    if user.role == ROLE_ADMIN:
        return Source.org_id == user.org_id
    shared = exists().where(SourceShare.source_id == Source.id, SourceShare.user_id == user.id)
    return (Source.org_id == user.org_id) & or_(
        Source.created_by == user.id, Source.org_share_permission.is_not(None), shared
    )


def subjects_of(session: Session, principal: Principal) -> list[User]:
    """Whose visibility bounds this caller: the user, or a key's creator and bound user (and,
    for an embed session, its user and its key's creator)."""
    if principal.key_id is not None and principal.restrictions is None:
        return []  # a key whose restrictions were not read with it: nothing (fail closed)
    creator = session.get(User, principal.user_id)
    if creator is None:
        return []  # a caller whose user is gone sees nothing (fail closed)
    subjects = [creator]
    key_creator_id = principal.restrictions.creator_id if principal.restrictions is not None else None
    if key_creator_id and key_creator_id != creator.id:
        # An embed session acts as its user, never beyond the key that created it.
        key_creator = session.get(User, key_creator_id)
        if key_creator is None or not key_creator.is_active:
            return []
        subjects.append(key_creator)
    bound_user_id = principal.restrictions.bound_user_id if principal.restrictions is not None else None
    if bound_user_id:
        bound = session.get(User, bound_user_id)
        if bound is None or not bound.is_active or bound.org_id != principal.org_id:
            return []  # a bound user who is gone sees nothing, so neither does the key
        subjects.append(bound)
    return subjects


def _selection(principal: Principal) -> SourceSelection | None:
    return principal.restrictions.source_selection if principal.restrictions is not None else None


def visible_sources_query(session: Session, principal: Principal) -> Select[Source]:
    """A SELECT of the sources this caller may open now."""
    subjects = subjects_of(session, principal)
    query = select(Source).where(Source.org_id == principal.org_id, Source.deleted_at.is_(None))
    if not subjects:
        return query.where(false())
    for user in subjects:
        query = query.where(_user_may_see(user))
    selection = _selection(principal)
    if selection is not None and selection.source_ids is not None:
        query = query.where(Source.id.in_(sorted(selection.source_ids)))
    return query


def permission_of(session: Session, user: User, source: Source | SourceSnapshot) -> str | None:
    if source.org_id != user.org_id or source.deleted_at is not None:
        return None
    if user.role == ROLE_ADMIN or source.created_by == user.id:
        return OWNER
    share = session.scalar(
        select(SourceShare.permission).where(SourceShare.source_id == source.id, SourceShare.user_id == user.id)
    )
    best = max((share, source.org_share_permission), key=lambda p: _RANK[p])
    return best


def open_source(
    session: Session, principal: Principal, source_id: str, *, need: str = VIEW, with_filter: bool = True
) -> SourceAccess:
    """The source, its current version, the caller's permission and row filter; or 404/403.

    Not visible at all -> 404 (never reveal that it exists). Visible but the needed
    permission is missing -> 403.
    """
    if need == VIEW and with_filter:
        hit = cached_access(principal, source_id)
        if hit is not None:
            return hit
    access = _open_source(session, principal, source_id, need=need, with_filter=with_filter)
    if need == VIEW and with_filter and principal.epoch is not None:
        metrics.cache_lookup("source_access", False)
        _cache.put(_cache_key(principal, source_id), access)
    return access


def source_row(session: Session, access: SourceAccess) -> Source:
    """The ORM row of a source the caller opened (`open_source`), loaded in `session`, to change it."""
    source = session.get(Source, access.opened_source.id)
    if source is None or source.deleted_at is not None:
        raise NotFound("source_not_found", f"No source {access.opened_source.id!r}.")
    return source


def cached_access(principal: Principal, source_id: str) -> SourceAccess | None:
    """`open_source(..., need=VIEW)`'s answer if it is cached for the principal's access
    epoch, else None. No I/O: an async endpoint calls it on the event loop."""
    if principal.epoch is None:
        return None
    hit = _cache.get(_cache_key(principal, source_id))
    if hit is not None:  # (a miss is counted by open_source, which the caller goes on to)
        metrics.cache_lookup("source_access", True)
    return hit


def _cache_key(principal: Principal, source_id: str) -> tuple[Hashable, ...]:
    # The user too: the embed sessions of one key act as different users.
    return (principal.org_id, principal.epoch, principal.key_id, principal.user_id, principal.role, source_id)


def _open_source(
    session: Session, principal: Principal, source_id: str, *, need: str, with_filter: bool
) -> SourceAccess:
    source, version, permission = _visible(session, principal, source_id, need)
    # Not asked to resolve the filter: one that lets nothing through, so that a caller
    # who reads rows with it anyway gets none rather than all.
    row_filter = RowFilter.deny("row filter not resolved for this access")
    if with_filter:
        columns = version.column_names if version else []
        if principal.restrictions is not None:
            row_filter = policies.resolve_key_filter(session, principal.restrictions, source.id, columns)
        else:
            row_filter = policies.resolve_user_filter(session, principal.org_id, principal.user_id, source.id, columns)
    return _granted(SourceSnapshot.of(source), VersionSnapshot.of(version) if version else None, permission, row_filter)


def _visible(
    session: Session, principal: Principal, source_id: str, need: str
) -> tuple[Source, SourceVersion | None, str]:
    """(source, current version, permission) if the caller may open it with `need`; 404/403."""
    # The source and its current version in one query.
    row = session.execute(
        select(Source, SourceVersion)
        .outerjoin(SourceVersion, SourceVersion.id == Source.current_version_id)
        .where(Source.id == source_id, Source.org_id == principal.org_id, Source.deleted_at.is_(None))
    ).first()
    if row is None:
        raise NotFound("source_not_found", f"No source {source_id!r}.")
    source, version = row
    subjects = subjects_of(session, principal)
    selection = _selection(principal)
    if selection is not None and not selection.allows(source.id):
        raise NotFound("source_not_found", f"No source {source_id!r}.")
    permissions: list[str] = []
    for user in subjects:
        permission_of_user = permission_of(session, user, source)
        if permission_of_user is None:
            raise NotFound("source_not_found", f"No source {source_id!r}.")
        permissions.append(permission_of_user)
    if not permissions:
        raise NotFound("source_not_found", f"No source {source_id!r}.")
    permission = weakest(permissions)
    if not at_least(permission, need):
        raise Forbidden("source_permission_denied", f"You need {need} permission on this source.")
    return source, version, permission


# --------------------------------------------------------------------------- previews


@dataclass(frozen=True)
class Preview:
    """What the web shows as "what would this user / key see": the rows to read and why.

    `access` reads the subject's rows, narrowed by the viewer's own filter where the viewer
    is someone else and is filtered (`narrowed_by_viewer`): a preview never shows a viewer
    rows they may not read themselves. `explanation` is the subject's own resolution (its
    filter, unnarrowed, with the notes), resolved once with the filter `access` applies.
    """

    access: SourceAccess
    explanation: policies.Explanation
    narrowed_by_viewer: bool


def open_explained(session: Session, principal: Principal, source_id: str) -> tuple[SourceAccess, policies.Explanation]:
    """`open_source` for viewing, with the explanation of its row filter (resolved once,
    never cached: a preview is not a hot path)."""
    source, version, permission = _visible(session, principal, source_id, VIEW)
    columns = version.column_names if version else []
    if principal.restrictions is not None:
        explanation = policies.explain_key(session, principal.restrictions, source.id, columns)
    else:
        explanation = policies.explain_user(session, principal.org_id, principal.user_id, source.id, columns)
    snapshot = VersionSnapshot.of(version) if version else None
    return _granted(SourceSnapshot.of(source), snapshot, permission, explanation.row_filter), explanation


def preview_as(session: Session, viewer: SourceAccess, viewer_user_id: str, subject: Principal) -> Preview:
    """What `subject` (the viewer themself, or a key's Principal) reads of the source the
    viewer opened (`viewer`); 404 if the subject cannot open it."""
    access, explanation = open_explained(session, subject, viewer.opened_source.id)
    narrowed = subject.user_id != viewer_user_id and not viewer.row_filter.is_unrestricted
    return Preview(access.narrowed(viewer.row_filter) if narrowed else access, explanation, narrowed)


def preview_as_user(session: Session, viewer: SourceAccess, viewer_user_id: str, user: User) -> Preview:
    """What `user` of the viewer's organization would read of the source the viewer opened,
    as far as their policies go (whether they may open it at all: `permission_of`)."""
    columns = viewer.version.column_names if viewer.version else []  # every column: rules on any apply
    explanation = policies.explain_user(session, user.org_id, user.id, viewer.opened_source.id, columns)
    narrowed = user.id != viewer_user_id and not viewer.row_filter.is_unrestricted
    # The user's rows within the viewer's: the viewer's own access narrowed by the user's
    # filter (the same rows as the user's filter alone when the viewer is unfiltered).
    return Preview(viewer.narrowed(explanation.row_filter), explanation, narrowed)
