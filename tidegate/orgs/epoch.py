"""The organization's access epoch: the version of everything that decides access in it.

Caches of access decisions (access.sources, the key cache) are keyed by the epoch read live
with the key on every request, or (PostgreSQL) checked against the serving process's leased
copy of the epochs (`orgs.epochwatch`), which the hooks below make every writer wait for. A
change that can alter what anyone may see (a key, a user, a role, a policy, a group, a share,
a new version of a source) calls `bump_access_epoch` in its own transaction, so the very next
request, in every process and on every node, misses those caches. Bumping too often costs a
cache miss; too rarely, a stale answer: when in doubt, bump.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, TextClause, event, text, update
from sqlalchemy.orm import ORMExecuteState, Session

from tidegate.orgs import epochwatch
from tidegate.orgs.models import Organization

BUMPED = "tidegate_bumped_epochs"  # session.info: {org_id: epoch written by this transaction}


def bump_access_epoch(session: Session, org_id: str) -> None:
    epoch = session.execute(
        update(Organization)
        .where(Organization.id == org_id)
        .values(access_epoch=Organization.access_epoch + 1)
        .returning(Organization.access_epoch)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if epoch is not None:
        # On PostgreSQL, once the transaction commits, it waits until every process answering
        # from its own copy of the epochs has applied this one (`orgs.epochwatch`).
        bumped = session.info.setdefault(BUMPED, {})
        bumped[org_id] = max(epoch, bumped.get(org_id, 0))


WROTE = "tidegate_wrote"  # session.info: this transaction may have changed rows


@event.listens_for(Session, "after_flush")
def _note_flush(session: Session, _context: object) -> None:
    session.info[WROTE] = True


@event.listens_for(Session, "do_orm_execute")
def _note_write(state: ORMExecuteState) -> None:
    statement = state.statement
    if state.is_update or state.is_delete or state.is_insert:
        state.session.info[WROTE] = True
    elif isinstance(statement, TextClause) and statement.text.lstrip()[:6].upper() in ("UPDATE", "DELETE", "INSERT"):
        state.session.info[WROTE] = True


@event.listens_for(Session, "before_commit")
def _collect_bumps(session: Session) -> None:
    """PostgreSQL: the epochs this transaction bumped through the database's triggers too (a
    key or user changed by an UPDATE of tidegate's that did not call `bump_access_epoch`),
    as the trigger of migration 0018 notes them; one query, for transactions that wrote."""
    if session.in_nested_transaction():
        return  # a SAVEPOINT released: nothing is committed yet (SQLAlchemy calls this for it too)
    engine = _engine_of(session)
    if engine.dialect.name != "postgresql":
        return
    session.flush()  # (commit would flush after this hook: its triggers must have run)
    if not session.info.pop(WROTE, False):
        return
    noted = session.execute(text("SELECT current_setting('tidegate.bumped', true)")).scalar()
    if noted:
        bumped = session.info.setdefault(BUMPED, {})
        for item in noted.split(","):
            org_id, _, epoch = item.rpartition(":")
            if org_id:
                bumped[org_id] = max(int(epoch), bumped.get(org_id, 0))


@event.listens_for(Session, "after_commit")
def _wait_until_applied(session: Session) -> None:
    """PostgreSQL: a transaction that bumped epochs returns only once every serving process
    holding an epoch lease has applied them (`orgs.epochwatch`): the next request anywhere
    sees the change, with no round trip of its own."""
    if session.in_nested_transaction():
        return  # a SAVEPOINT released: its bumps wait for the real commit, and so does the wait
    bumped = session.info.pop(BUMPED, None)
    session.info.pop(WROTE, None)
    if not bumped:
        return
    engine = _engine_of(session)
    if engine.dialect.name == "postgresql":
        epochwatch.wait_for_acks(engine, bumped)


@event.listens_for(Session, "after_rollback")
def _forget_bumps(session: Session) -> None:
    session.info.pop(BUMPED, None)
    session.info.pop(WROTE, None)


def _engine_of(session: Session) -> Engine:
    bind = session.get_bind()
    return bind.engine if isinstance(bind, Connection) else bind
