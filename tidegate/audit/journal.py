"""The request audit journal: an append-only file per process, shipped to the database.

Why a file: recording must not slow a request, yet a client that got a response must be
able to count on its event existing even if the server is killed with -9 right after.
Each event is one `write(2)` of one line to a file opened with O_APPEND, done before the
response is sent. Once `write` returns the bytes belong to the kernel, so killing the
process cannot lose them (set TIDEGATE_AUDIT_FSYNC=1 to also survive a power cut, at the
cost of an fsync per request).

Segments: a process appends to `<pid>-<n>.active.jsonl` while holding an exclusive flock
on it; every second (and before an audit query) it renames the segment to `.ready.jsonl`
and starts a new one. A shipper (a thread of the process, or under `tidegate serve` one
process beside the workers: `audit.shipper`) inserts ready segments into `audit_events` with the event
ids as primary keys (so shipping twice inserts once), updates the keys' `last_used_at`,
commits, and only then deletes the segment. An `.active` segment whose flock can be taken
belongs to a dead process: it is shipped too, which is how a restart recovers after -9.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from datetime import datetime
from pathlib import Path

import orjson
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tidegate.audit.models import AuditEvent
from tidegate.credentials.models import ApiKey
from tidegate.db.engine import session_scope

log = logging.getLogger("tidegate.audit")

ACTIVE = ".active.jsonl"
READY = ".ready.jsonl"
SHIP_BATCH = 500


class Journal:
    def __init__(self, directory: Path, database_url: str, *, fsync: bool = False):
        self.directory = directory
        self.database_url = database_url
        self.fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._written = 0
        self._pid = 0
        self._sequence = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- writing -------------------------------------------------------------------------

    def _open_segment(self) -> None:
        self._sequence += 1
        path = self.directory / f"{os.getpid()}-{self._sequence}-{os.urandom(4).hex()}{ACTIVE}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for the segment's life; released by the kernel on death
        self._fd, self._path, self._written, self._pid = fd, path, 0, os.getpid()

    def append(self, event: dict) -> None:
        line = orjson.dumps(event, default=_json_default) + b"\n"
        with self._lock:
            if self._fd is None or self._pid_changed():
                self._open_segment()
            os.write(self._fd, line)
            if self.fsync:
                os.fsync(self._fd)
            self._written += 1

    def _pid_changed(self) -> bool:
        # After a fork the child must not share the parent's segment.
        return self._pid != os.getpid()

    def rotate(self) -> None:
        """Hand the current segment to the shipper, if it holds anything."""
        with self._lock:
            if self._fd is None or self._written == 0:
                return
            ready = self._path.with_name(self._path.name[: -len(ACTIVE)] + READY)
            os.rename(self._path, ready)
            os.close(self._fd)
            self._fd = self._path = None

    # -- shipping ------------------------------------------------------------------------

    def flush(self) -> int:
        """Rotate and ship everything shippable now. Returns the number of events shipped."""
        self.rotate()
        return ship_pending(self.directory, self.database_url, own_path=self._path)

    def start(self, interval: float = 1.0, *, ship: bool = True) -> None:
        """Every `interval`: rotate the segment, and ship what is ready unless `ship` is
        False (then a separate shipper process does it: `audit.shipper`)."""
        def loop():
            while not self._stop.wait(interval):
                try:
                    self.flush() if ship else self.rotate()
                except Exception:  # keep the segments; the next round retries
                    log.exception("audit shipping failed; will retry")

        self._thread = threading.Thread(target=loop, name="tidegate-audit-shipper", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.flush()
        finally:
            with self._lock:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value))


def _claim_orphans(directory: Path, own_path: Path | None) -> None:
    """Turn active segments of dead processes into ready ones."""
    for path in directory.glob(f"*{ACTIVE}"):
        if own_path is not None and path == own_path:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its writer is alive
            continue
        try:
            if path.exists():
                os.rename(path, path.with_name(path.name[: -len(ACTIVE)] + READY))
        finally:
            os.close(fd)


def ship_pending(directory: Path, database_url: str, *, own_path: Path | None = None) -> int:
    lock_fd = os.open(directory / "ship.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # one shipper at a time across processes
        _claim_orphans(directory, own_path)
        shipped = 0
        for path in sorted(directory.glob(f"*{READY}")):
            events = _read_segment(path)
            if events:
                try:
                    _insert_events(database_url, events)
                except Exception:
                    # One event the database refuses must not block every later one:
                    # ship the rest one by one and set the refused aside (kept, not lost).
                    log.exception("audit segment %s failed as a batch; shipping event by event", path.name)
                    _ship_individually(directory, database_url, events)
            path.unlink()
            shipped += len(events)
        return shipped
    finally:
        os.close(lock_fd)


def _ship_individually(directory: Path, database_url: str, events: list[dict]) -> None:
    for event in events:
        try:
            _insert_events(database_url, [event])
        except Exception:
            log.error("audit event %s refused by the database; kept in rejected.jsonl", event.get("id"))
            with open(directory / "rejected.jsonl", "ab") as rejected:
                rejected.write(orjson.dumps(event, default=_json_default) + b"\n")
                rejected.flush()
                os.fsync(rejected.fileno())


def _read_segment(path: Path) -> list[dict]:
    events = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            # Only a torn final line is possible (a write cut by a power loss without fsync).
            log.error("audit journal %s line %d unreadable; skipped", path.name, number)
            continue
        event["timestamp"] = datetime.fromisoformat(event["timestamp"])
        events.append(event)
    return events


def _insert_events(database_url: str, events: list[dict]) -> None:
    with session_scope(database_url) as session:
        insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
        for start in range(0, len(events), SHIP_BATCH):
            batch = events[start : start + SHIP_BATCH]
            # Core, not ORM, insert: the ORM's per-row bookkeeping doubled the cost per event.
            session.connection().execute(insert(AuditEvent.__table__).on_conflict_do_nothing(index_elements=["id"]),
                                         batch)
        _update_last_used(session, events)


def _update_last_used(session: Session, events: list[dict]) -> None:
    latest: dict[str, dict] = {}
    for event in events:
        key_id = event.get("key_id")
        if key_id and (key_id not in latest or event["timestamp"] > latest[key_id]["timestamp"]):
            latest[key_id] = event
    for key_id, event in latest.items():
        current = session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))
        if current is None or current < event["timestamp"]:
            session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id)
                .values(last_used_at=event["timestamp"], last_used_ip=event.get("ip_address"))
            )
