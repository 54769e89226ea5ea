"""Turning `Authorization: Bearer qk_...` + `X-Tenant-ID` into a Principal, or refusing.

The key and its creator are read from the database, or from an in-process cache that is
exact, so a revocation, an expiry, a role change or a deactivation is seen by the very next
request in every worker process and on every node:
- SQLite: an entry is used only while no commit has landed anywhere since it was read
  (`db.changes.ChangeWatch`, ~3 us, no I/O).
- PostgreSQL: an entry holds the organization's access epoch read in the same query as the
  key; it is used only while a read of that epoch that started after the request did finds
  it unchanged. Every change to a key, a user, the organization's limits (and anything else
  that decides access) bumps the epoch in its own transaction (`orgs.epoch`). The epoch reads
  of concurrent requests share one round trip (`batching.Coalescer`): one tiny indexed query
  per trip, so under load far fewer than one per request. A serving process holding an epoch
  lease (`orgs.epochwatch`) validates the entry against its own copy of the epochs instead,
  with no round trip: every writer waits until that copy has its bump before it returns.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from datetime import datetime

import psycopg
from anyio import to_thread
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tidegate import metrics
from tidegate.batching import Coalescer
from tidegate.caching import LRUCache
from tidegate.core.principal import Principal
from tidegate.core.restrictions import KeyRestrictions
from tidegate.credentials.bounds import restrictions_of
from tidegate.credentials.hashing import hash_secret
from tidegate.credentials.keyformat import is_well_formed
from tidegate.credentials.models import ApiKey, key_status
from tidegate.db.base import utcnow
from tidegate.db.changes import ChangeWatch
from tidegate.db.engine import get_engine, session_scope
from tidegate.errors import Unauthenticated
from tidegate.orgs.epochwatch import EpochWatch
from tidegate.orgs.models import Organization, User

# One message for "no such key" and "key of another tenant": a caller must not learn
# whether a key exists by trying it against organizations.
INVALID_KEY = "The API key is invalid for this organization."


@dataclass(frozen=True)
class KeyState:
    """What authentication needs of a key and its creator, as read at one moment."""

    restrictions: KeyRestrictions
    revoked_at: datetime | None
    owner_role: str | None
    owner_active: bool
    access_epoch: int | None
    # The organization's ceiling shared by all of the owner's keys (None: not read).
    owner_rate_limit_per_minute: int | None = None
    # Set once the key has been rotated: when, and its replacement's display prefix.
    rotated_at: datetime | None = None
    rotated_to_prefix: str | None = None

    @classmethod
    def of(
        cls, key: ApiKey, owner: User | None, access_epoch: int | None, owner_rate_limit_per_minute: int | None = None
    ) -> KeyState:
        return cls(
            restrictions=restrictions_of(key),
            revoked_at=key.revoked_at,
            owner_role=owner.role if owner else None,
            owner_active=bool(owner and owner.is_active),
            access_epoch=access_epoch,
            owner_rate_limit_per_minute=owner_rate_limit_per_minute,
            rotated_at=key.rotated_at,
            rotated_to_prefix=key.rotated_to_prefix,
        )

    @property
    def key_id(self) -> str:
        return self.restrictions.key_id

    @property
    def org_id(self) -> str:
        return self.restrictions.org_id

    @property
    def owner_id(self) -> str:
        return self.restrictions.creator_id

    @property
    def rate_limit_per_minute(self) -> int:
        return self.restrictions.rate_limit.per_minute


def parse_bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing_credentials", "Send 'Authorization: Bearer qk_...' with every request.")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("invalid_authorization", "The Authorization header must be 'Bearer qk_...'.")
    return token


def digest_of(pepper: bytes, token: str, tenant_id: str | None) -> str:
    """The keyed hash a well-formed token is stored under; 401 before any lookup otherwise."""
    if not tenant_id:
        raise Unauthenticated("missing_tenant", "Send 'X-Tenant-ID: org_...' with every request.")
    if not is_well_formed(token):
        # Checksum failed: a typo or not one of our keys. No database lookup.
        raise Unauthenticated("invalid_api_key", INVALID_KEY)
    return hash_secret(pepper, token)


def load_key_state(session: Session, digest: str) -> KeyState | None:
    """The key stored under `digest` with its creator, whatever its state; one query."""
    row = session.execute(
        select(ApiKey, User, Organization.access_epoch, Organization.user_rate_limit_per_minute)
        .outerjoin(User, User.id == ApiKey.created_by)
        .join(Organization, Organization.id == ApiKey.org_id)
        .where(ApiKey.secret_hash == digest)
    ).first()
    return KeyState.of(*row) if row else None


def identify(state: KeyState | None, tenant_id: str | None) -> KeyState:
    # The lookup was by the full keyed hash (unique index), so a row is an exact match.
    if state is None or state.org_id != tenant_id:
        raise Unauthenticated("invalid_api_key", INVALID_KEY)
    return state


def principal_for(state: KeyState, now: datetime | None = None) -> Principal:
    """What the key may do now, or the 401 that refuses it (revoked, expired, owner inactive).

    The one place for these rules: the API calls it per request, and the web UI through
    `principal_for_key` to preview "what this key would see".
    """
    status = key_status(state.revoked_at, state.restrictions.expiry.at, now or utcnow())
    if status == "revoked":
        raise Unauthenticated("api_key_revoked", "This API key has been revoked.")
    if status == "expired":
        raise Unauthenticated("api_key_expired", "This API key has expired.")
    if not state.owner_active or state.owner_role is None:  # (no role: the owner row is gone)
        raise Unauthenticated("api_key_owner_inactive", "The user who created this API key is deactivated.")
    principal = state.__dict__.get("_principal")
    if principal is None:  # the same for every request while the state is cached
        principal = Principal.for_key(state.owner_role, state.restrictions, epoch=state.access_epoch)
        state.__dict__["_principal"] = principal  # (a frozen dataclass: not through __setattr__)
    return principal


def principal_for_key(session: Session, key: ApiKey) -> Principal:
    """`principal_for` an ORM key (its creator read in `session`); no access caching."""
    return principal_for(KeyState.of(key, session.get(User, key.created_by), None))


def check_ip(state: KeyState, client_ip: str | None) -> None:
    state.restrictions.ip_allowlist.verify(client_ip)


def read_epochs(database_url: str, org_ids: list[str]) -> list[int | None]:
    """The access epoch of each organization (None: no such organization), one query."""
    wanted = set(org_ids)
    with get_engine(database_url).connect() as conn:
        found = dict(
            conn.execute(select(Organization.id, Organization.access_epoch).where(Organization.id.in_(wanted))).all()
        )
    return [found.get(org_id) for org_id in org_ids]


class EpochReader:
    """`read_epochs` on a connection of its own per event loop, in autocommit and async (one
    round trip a read, no thread hop; a pooled connection would add a pre-ping and a COMMIT).
    A failed read drops the connection (the next one reconnects) and raises: the requests
    waiting on it get a 503."""

    SQL = "SELECT id, access_epoch FROM organizations WHERE id = ANY(%s)"

    def __init__(self, database_url: str):
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._conns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, psycopg.AsyncConnection] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, org_ids: list[str]) -> list[int | None]:
        loop = asyncio.get_running_loop()
        conn = self._conns.get(loop)
        try:
            if conn is None or conn.closed:
                conn = self._conns[loop] = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=5
                )
            cursor = await conn.execute(self.SQL, (list(set(org_ids)),))
            found: dict[str, int] = dict(await cursor.fetchall())
        except Exception:
            self._conns.pop(loop, None)
            if conn is not None:
                await conn.close()
            raise
        return [found.get(org_id) for org_id in org_ids]


class KeyCache:
    """Recently used keys by keyed hash, each valid only while what it was read at holds:
    SQLite's commit generation, or (PostgreSQL) its organization's access epoch.

    Unknown hashes are never cached (anyone can make well-formed tokens: caching misses
    would let them fill memory); a miss always reads the database. Memory: at most `size`
    entries (10,000 by default), each under 2 KB.
    """

    def __init__(self, database_url: str, size: int = 10_000):
        self.database_url = database_url
        self.watch = ChangeWatch(database_url)
        self.size = size
        self._entries: LRUCache[str, tuple[tuple[int, int] | None, KeyState]] = LRUCache(size, name="key cache")
        self.epochs: Coalescer[str, int | None] | None = (
            None if self.watch.supported else Coalescer(EpochReader(database_url))
        )
        # PostgreSQL, in a serving process: its own copy of the epochs while its lease holds
        # (set by the app at start-up); None, or the lease lapsed: `epochs` is read per request.
        self.leases: EpochWatch | None = None

    def unvalidated(self, digest: str) -> KeyState | None:
        """PostgreSQL: the entry `lookup` will validate, if any (to start work that needs its
        rate limits while the epoch is read; used only if `lookup` returns this very state)."""
        if self.epochs is None:
            return None
        hit = self._entries.get(digest)
        return hit[1] if hit is not None else None

    async def lookup(self, digest: str) -> KeyState | None:
        """The key state under `digest` as of now (no older than this call): from the cache
        when still valid, else read from the database in the threadpool."""
        state = self.cached(digest)
        if state is None and self.epochs is not None:
            hit = self._entries.get(digest)
            if hit is not None and hit[1].access_epoch is not None:
                known = self.leases.known(hit[1].org_id) if self.leases is not None else None
                if known is not None:
                    # Not older than any bump a writer has returned from: no round trip. (An
                    # entry read after a bump not yet announced here is newer still: valid.)
                    fresh = hit[1].access_epoch >= known
                else:
                    # Raises (a 503) if the database is down: never a stale success.
                    fresh = await self.epochs.ask(hit[1].org_id) == hit[1].access_epoch
                metrics.cache_lookup("keys", fresh)
                if fresh:
                    return hit[1]
            else:
                metrics.cache_lookup("keys", False)
        if state is not None:
            return state
        return await to_thread.run_sync(self.load, digest)

    def cached(self, digest: str) -> KeyState | None:
        """The state under `digest` if it was read since the last commit anywhere (SQLite);
        else None (PostgreSQL: `lookup` validates entries by the epoch)."""
        generation = self.watch.generation()
        if generation is None:
            return None
        hit = self._entries.get(digest)
        fresh = hit is not None and hit[0] == generation
        metrics.cache_lookup("keys", fresh)
        return hit[1] if fresh and hit is not None else None

    def load(self, digest: str) -> KeyState | None:
        """Read from the database (blocking) and remember it."""
        # The generation is taken BEFORE the read: a commit landing in between makes the
        # entry stale at once (one extra read), never a stale entry that looks fresh.
        # (PostgreSQL: the epoch is read in the key's own query, so it is never older.)
        generation = self.watch.generation()
        with session_scope(self.database_url) as session:
            state = load_key_state(session, digest)
        if state is not None and (generation is not None or self.epochs is not None):
            self._entries.put(digest, (generation, state))
        return state
