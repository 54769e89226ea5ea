"""Running the chainer (audit.chain): a cluster job, once a second across every node.

Under `tidegate serve` the audit shipper process runs it after each shipping round, so
workers never pay for hashing; `create_app` used on its own runs it in its journal's
thread, after each shipping round. When the server stops, a last round chains what is left
and signs every moved head at once.

A round first looks (read only) whether anything waits: an idle chainer writes nothing, so
it neither claims rounds in `cluster_jobs` every second nor, on SQLite, makes every process
reload its cached keys (their cache follows every commit).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from tidegate.audit.chain import CHAIN_BATCH, CHECKPOINT_SECONDS, chain_org, orgs_with_unchained, sign_heads
from tidegate.audit.models import AuditChainHead, AuditEvent
from tidegate.audit.signing import Signer, load_signer
from tidegate.db import jobs
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope

log = logging.getLogger("tidegate.audit")

JOB = "audit-chain"
INTERVAL = 1.0


def chain_round(
    database_url: str, signer: Signer, *, checkpoint_seconds: float = CHECKPOINT_SECONDS, force_sign: bool = False
) -> int:
    """Chain every unchained event, then sign the heads that are due; how many were chained."""
    with session_scope(database_url) as session:
        org_ids = orgs_with_unchained(session)
    # A position another chainer took first rolls back that batch (IntegrityError): it has them.
    chained = sum(chain_now(database_url, org_id) for org_id in org_ids)
    with session_scope(database_url) as session:
        sign_heads(session, signer, interval=checkpoint_seconds, force=force_sign)
    return chained


def chain_now(database_url: str, org_id: str) -> int:
    """Chain the organization's pending events now (an export wants the latest ones)."""
    chained = 0
    while True:
        try:
            with session_scope(database_url) as session:
                count = chain_org(session, org_id)
        except (IntegrityError, OperationalError):  # the chainer was chaining them: it has them
            return chained
        chained += count
        if count < CHAIN_BATCH:
            return chained


def has_work(database_url: str, checkpoint_seconds: float = CHECKPOINT_SECONDS) -> bool:
    """Events wait for a position, or a moved head for its checkpoint."""
    due = utcnow() - timedelta(seconds=checkpoint_seconds)
    with session_scope(database_url) as session:
        unchained = session.scalar(select(AuditEvent.id).where(AuditEvent.chain_seq.is_(None)).limit(1))
        unsigned = session.scalar(
            select(AuditChainHead.org_id)
            .where(
                AuditChainHead.chain_seq > AuditChainHead.signed_seq,
                AuditChainHead.signed_at.is_(None) | (AuditChainHead.signed_at <= due),
            )
            .limit(1)
        )
    return unchained is not None or unsigned is not None


def run_if_due(database_url: str, signer: Signer) -> bool:
    """One wake-up: True if this process ran a round."""
    if not has_work(database_url):
        return False
    ran, _ = jobs.run_if_due(database_url, JOB, INTERVAL, lambda: chain_round(database_url, signer))
    return ran


def last_round(database_url: str, signer: Signer) -> None:
    """Chain what is left and sign every moved head (the server stops)."""
    try:
        if not has_work(database_url, checkpoint_seconds=0):
            return
        jobs.run_now(database_url, JOB, lambda: chain_round(database_url, signer, force_sign=True), wait_seconds=10)
    except Exception as exc:  # the next start chains and signs them
        log.warning("audit chain: last round failed (%s); the next start signs the heads", type(exc).__name__)


def signer_for(home: str | Path, seed: bytes | None) -> Signer:
    return load_signer(Path(home), seed)
