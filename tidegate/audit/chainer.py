"""Running the chainer (audit.chain): a cluster job, once a second across every node.

Under `tidegate serve` the audit shipper process runs it after each shipping round, so
workers never pay for hashing; `create_app` used on its own runs it in a thread. When the
server stops, a last round chains what is left and signs every moved head at once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from sqlalchemy.exc import IntegrityError, OperationalError

from tidegate.audit.chain import CHAIN_BATCH, CHECKPOINT_SECONDS, chain_org, orgs_with_unchained, sign_heads
from tidegate.audit.signing import Signer, load_signer
from tidegate.db import jobs
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


def run_if_due(database_url: str, signer: Signer) -> bool:
    ran, _ = jobs.run_if_due(database_url, JOB, INTERVAL, lambda: chain_round(database_url, signer))
    return ran


def last_round(database_url: str, signer: Signer) -> None:
    """Chain what is left and sign every moved head (the server stops)."""
    try:
        jobs.run_now(database_url, JOB, lambda: chain_round(database_url, signer, force_sign=True), wait_seconds=10)
    except Exception as exc:  # the next start chains and signs them
        log.warning("audit chain: last round failed (%s); the next start signs the heads", type(exc).__name__)


def signer_for(home: str | Path, seed: bytes | None) -> Signer:
    return load_signer(Path(home), seed)


class PeriodicChainer:
    """`run_if_due` every INTERVAL seconds in a daemon thread (create_app without a shipper process)."""

    def __init__(self, database_url: str, signer: Signer):
        self.database_url, self.signer = database_url, signer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(INTERVAL):
                try:
                    run_if_due(self.database_url, self.signer)
                except Exception as exc:  # the database is down: the next round retries
                    log.warning("audit chain round failed (%s); will retry", type(exc).__name__)

        self._thread = threading.Thread(target=loop, name="tidegate-audit-chain", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        last_round(self.database_url, self.signer)
