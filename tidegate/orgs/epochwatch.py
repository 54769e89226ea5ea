"""PostgreSQL: each serving process keeps its own copy of the organizations' access epochs, so
a warm request validates its cached key with no round trip; writers wait until every such
process has applied their bump before they return.

- **Announced.** A trigger (migration 0018) sends `NOTIFY tidegate_epoch, '<org>:<epoch>'`
  whenever an organization's epoch changes, by tidegate or by any SQL; PostgreSQL delivers it
  when the transaction commits.
- **Listened to, under a lease.** `EpochWatch` (one thread per serving process) LISTENs on a
  connection of its own, registers a lease (`epoch_leases`: expiry by PostgreSQL's clock),
  then, once the lease is committed, reads every epoch in the statement that records them as
  acknowledged (`epoch_acks`).
  Each notification updates the copy, then is acknowledged. The lease is renewed on that same
  connection every quarter of its length, so a renewal also proves the connection alive, and
  only while it has not lapsed: a lapsed (or fenced) lease is taken again with a full read.
  The process uses its copy only before its local deadline: the monotonic time taken before
  the renewal was sent, plus the lease, minus a margin, so always before PostgreSQL's expiry.
  Past it (listener cut, stalled, database unreachable) `known` answers None and the key
  cache reads the epoch per request, as without leases.
- **Writers wait.** `wait_for_acks` runs after every commit that bumped an epoch
  (`orgs.epoch`): it returns once every process holding a live lease has acknowledged the
  new epoch. One that has not within `ACK_WAIT_SECONDS` is fenced (its lease deleted: it
  cannot renew, and must read everything again) and the writer waits until that lease's
  expiry, when the process's own deadline has passed too. So a change made through tidegate
  is seen by the first request that starts after it returned, on every node, and a writer
  waits at most `ACK_WAIT_SECONDS` plus one lease.

Changes made by other SQL are announced the same way (seen as soon as delivered, a few ms),
but nothing waits for them: only changes made through tidegate carry the strict guarantee.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

log = logging.getLogger("tidegate.epochs")

CHANNEL = "tidegate_epoch"
LEASE_SECONDS = 2.0
ACK_WAIT_SECONDS = 0.5  # a live listener acknowledges in milliseconds; past this it is fenced
DELETED = 2**63 - 1  # the epoch a vanished organization is announced with

# Leased processes (live by PostgreSQL's clock) that have not acknowledged every wanted epoch.
WAITING_SQL = text(
    """
    SELECT l.process_id FROM epoch_leases l
    WHERE l.expires_at > clock_timestamp()
      AND EXISTS (
        SELECT 1 FROM unnest(CAST(:orgs AS text[]), CAST(:epochs AS bigint[])) AS w(org_id, epoch)
        WHERE NOT EXISTS (
          SELECT 1 FROM epoch_acks a
          WHERE a.process_id = l.process_id AND a.org_id = w.org_id AND a.epoch >= w.epoch))
    """
)
# Fence: the lease is gone (no renewal), and the writer waits out what was left of it.
FENCE_SQL = text(
    """
    DELETE FROM epoch_leases WHERE process_id = ANY(CAST(:processes AS text[]))
    RETURNING GREATEST(0, EXTRACT(EPOCH FROM expires_at - clock_timestamp()))
    """
)


def wait_for_acks(engine: Engine, bumped: dict[str, int]) -> None:
    """Return once every process with a live lease has applied `bumped` ({org: epoch}), or
    once the lease of each that has not is fenced and expired. Raises if the database cannot
    be asked (the caller's request fails: its change is committed, but not known to be seen)."""
    orgs, epochs = list(bumped), [bumped[org] for org in bumped]
    give_up = time.monotonic() + ACK_WAIT_SECONDS
    pause = 0.0005
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while True:
            waiting = list(conn.execute(WAITING_SQL, {"orgs": orgs, "epochs": epochs}).scalars())
            if not waiting:
                return
            if time.monotonic() >= give_up:
                break
            time.sleep(pause)
            pause = min(2 * pause, 0.01)
        left = [float(s) for s in conn.execute(FENCE_SQL, {"processes": waiting}).scalars()]
    log.warning(
        "%d serving process(es) did not acknowledge an access epoch within %.1f s: fenced; "
        "waiting %.2f s for their leases to run out",
        len(waiting),
        ACK_WAIT_SECONDS,
        max(left, default=0.0),
    )
    if left:
        time.sleep(max(left) + 0.01)


class EpochWatch:
    """This process's copy of the access epochs, valid while its lease holds (see the module)."""

    def __init__(self, database_url: str, lease_seconds: float = LEASE_SECONDS):
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self.lease_seconds = lease_seconds
        self.margin = lease_seconds / 8
        self.process_id = f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._epochs: dict[str, int] = {}
        self._valid_until = 0.0  # time.monotonic() before which the copy may be used
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None
        self.registrations = 0  # full reads (first, and after each lapse), for tests
        self.applied = 0  # notifications applied

    # -- the request side: one dict lookup, no I/O ------------------------------------------------

    def known(self, org_id: str) -> int | None:
        """The organization's epoch as of every bump a writer has returned from, or None if
        this process may not answer that (lease lapsed, or the organization is unknown)."""
        if time.monotonic() >= self._valid_until:
            return None
        return self._epochs.get(org_id)

    @property
    def leased(self) -> bool:
        return time.monotonic() < self._valid_until

    # -- the listener thread ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tidegate-epochs", daemon=True)
        self._thread.start()

    def wait_leased(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.leased and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.leased

    def close(self) -> None:
        """Stop listening and give the lease back (writers stop waiting for this process)."""
        self._valid_until = 0.0
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.lease_seconds + 5)
        try:
            with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                conn.execute("DELETE FROM epoch_leases WHERE process_id = %s", (self.process_id,))
                conn.execute("DELETE FROM epoch_acks WHERE process_id = %s", (self.process_id,))
        except Exception as exc:  # noqa: BLE001 - the database is down: the lease simply expires
            log.warning("epoch lease not released (%s); it expires by itself", type(exc).__name__)

    def cut(self) -> None:
        """Close the listening connection from outside (tests: a listener that loses its
        database); the thread reconnects and takes a new lease."""
        conn = self._conn
        if conn is not None:
            try:
                conn.pgconn.finish()
            except Exception:  # noqa: BLE001
                pass

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=5,
                    keepalives=1,
                    keepalives_idle=5,
                    keepalives_interval=2,
                    keepalives_count=2,
                ) as conn:
                    self._conn = conn
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._register(conn)
                    backoff = 0.05
                    self._serve(conn)
            except Exception as exc:  # noqa: BLE001 - fall back to per-request reads, retry
                if not self._stop.is_set():
                    log.warning("epoch listener lost (%s); reading epochs per request", type(exc).__name__)
            finally:
                self._valid_until = 0.0
                self._conn = None
            self._stop.wait(backoff)
            backoff = min(2 * backoff, 1.0)

    def _register(self, conn: psycopg.Connection) -> None:
        """Take the lease, then read every epoch (after LISTEN: nothing committed since is
        missed) and record them as acknowledged.

        Two transactions, in this order: a writer that commits before the lease is visible does
        not wait for this process, so the read must start after the lease committed to see its
        bump (read in the lease's own transaction, it could miss a bump committed in between
        and the copy would be used at the old epoch until the notification came). A writer
        that commits after the lease is visible waits for this process's acknowledgement."""
        self._valid_until = 0.0
        started = time.monotonic()
        with conn.transaction():
            # Leftovers of processes gone for a minute (killed: no release), and of fenced ones
            # (no lease: nobody waits for them; one that comes back registers afresh).
            conn.execute("DELETE FROM epoch_leases WHERE expires_at < clock_timestamp() - interval '1 minute'")
            conn.execute(
                "DELETE FROM epoch_acks a WHERE a.process_id = %s "
                "OR NOT EXISTS (SELECT 1 FROM epoch_leases l WHERE l.process_id = a.process_id)",
                (self.process_id,),
            )
            conn.execute(
                "INSERT INTO epoch_leases (process_id, expires_at) "
                "VALUES (%s, clock_timestamp() + make_interval(secs => %s)) "
                "ON CONFLICT (process_id) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                (self.process_id, self.lease_seconds),
            )
        rows = conn.execute(  # (autocommit: its own transaction, after the lease's)
            "INSERT INTO epoch_acks (process_id, org_id, epoch) "
            "SELECT %s, id, access_epoch FROM organizations "
            "ON CONFLICT (process_id, org_id) DO UPDATE SET epoch = GREATEST(epoch_acks.epoch, EXCLUDED.epoch) "
            "RETURNING org_id, epoch",
            (self.process_id,),
        ).fetchall()
        for org_id, epoch in rows:
            self._apply(org_id, epoch)
        self.registrations += 1
        self._valid_until = started + self.lease_seconds - self.margin

    def _serve(self, conn: psycopg.Connection) -> None:
        renew_at = time.monotonic() + self.lease_seconds / 4
        while not self._stop.is_set():
            wait = max(0.0, min(renew_at - time.monotonic(), 0.1))  # (0.1: a prompt stop)
            applied: dict[str, int] = {}
            for notify in conn.notifies(timeout=wait, stop_after=1):
                self._note(notify, applied)
            while applied:  # drain what else has arrived, then acknowledge it all at once
                before = len(applied)
                for notify in conn.notifies(timeout=0.0, stop_after=64):
                    self._note(notify, applied)
                if len(applied) == before:
                    break
            if applied:
                conn.execute(
                    "INSERT INTO epoch_acks (process_id, org_id, epoch) "
                    "SELECT %s, o, e FROM unnest(%s::text[], %s::bigint[]) AS t(o, e) "
                    "ON CONFLICT (process_id, org_id) DO UPDATE SET epoch = GREATEST(epoch_acks.epoch, EXCLUDED.epoch)",
                    (self.process_id, list(applied), list(applied.values())),
                )
            if time.monotonic() >= renew_at:
                started = time.monotonic()
                renewed = conn.execute(
                    "UPDATE epoch_leases SET expires_at = clock_timestamp() + make_interval(secs => %s) "
                    "WHERE process_id = %s AND expires_at > clock_timestamp()",
                    (self.lease_seconds, self.process_id),
                ).rowcount
                if renewed:
                    self._valid_until = started + self.lease_seconds - self.margin
                else:  # lapsed or fenced: what was missed is unknown, read everything again
                    log.warning("epoch lease lapsed; reading every epoch again")
                    self._register(conn)
                renew_at = started + self.lease_seconds / 4

    def _note(self, notify: psycopg.Notify, applied: dict[str, int]) -> None:
        org_id, _, raw = notify.payload.rpartition(":")
        try:
            epoch = int(raw)
        except ValueError:
            return  # not ours (anyone may NOTIFY on the channel): never lowers anything
        self._apply(org_id, epoch)
        applied[org_id] = max(epoch, applied.get(org_id, epoch))
        self.applied += 1

    def _apply(self, org_id: str, epoch: int) -> None:
        # Epochs only grow: a late or repeated notification never lowers the copy.
        if epoch > self._epochs.get(org_id, -1):
            self._epochs[org_id] = epoch
