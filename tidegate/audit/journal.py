"""The request audit journal: an append-only file per process, shipped to the database.

Why a file: recording must not slow a request, yet a client that got a response must be
able to count on its event existing even if the server is killed with -9 right after.
Each event is one record, `<crc32 of the JSON, 8 hex> <JSON>\\n`, written whole to a file
opened with O_APPEND before the response is sent (`Journal.append`). Once `write` returns
the bytes belong to the kernel, so killing the process cannot lose them (set
TIDEGATE_AUDIT_FSYNC=1 to also survive a power cut, at the cost of an fsync per request).
A write that fails or comes up short (a full disk) is cut back off the file, so no torn
record stays and the next one starts on its own line, and `append` raises
`AuditUnavailable`: the request is refused with 503 before any of its data is sent. A
reader checks every record's checksum; a torn one (a power cut mid-write) is counted and
quarantined in `torn.jsonl`, and the records after it are still read.

Segments: a process appends to `<pid>-<n>.active.jsonl` while holding an exclusive flock
on it; every second (and before an audit query) it renames the segment to `.ready.jsonl`
and starts a new one. A shipper (a thread of the process, or under `tidegate serve` one
process beside the workers: `audit.shipper`) inserts ready segments into `audit_events` with
the event ids as primary keys (so shipping twice inserts once), updates what the keys'
requests say about them (their last use and client addresses: `after_insert`), commits,
and only then deletes the segment. An `.active` segment whose
flock can be taken belongs to a dead process: it is shipped too, which is how a restart
recovers after -9.

Nothing is deleted before the database has it. A database that cannot be reached (or
fails) leaves every segment where it is, to be retried with backoff, across restarts. Only
an event the database refuses as such (a value it cannot store: IntegrityError, DataError)
is set aside, after a second try with its text made storable, into `rejected.jsonl`:
kept, counted by `tidegate audit status`, and shipped again by `tidegate audit reship`.
Files are 0600, the directory 0700.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tidegate.audit.models import AuditEvent
from tidegate.audit.record import storable
from tidegate.db.engine import session_scope
from tidegate.errors import ServiceUnavailable

log = logging.getLogger("tidegate.audit")

ACTIVE = ".active.jsonl"
READY = ".ready.jsonl"
OPENING = ".opening"  # a segment being created; never holds a record
STALE_OPENING_SECONDS = 60
SET_ASIDE = "rejected.jsonl"  # events the database refused as such: kept, `tidegate audit reship`
TORN = "torn.jsonl"  # what was left of torn records: kept and counted
SHIP_LOCK = "ship.lock"
SHIP_BATCH = 500
MAX_BACKOFF = 5.0  # seconds between shipping attempts while the database is down, at most


# The table itself (`AuditEvent.__table__` is typed as any FROM clause).
AUDIT_EVENTS = AuditEvent.metadata.tables[AuditEvent.__tablename__]

# Runs in the transaction that inserts shipped events, with them: what else they update
# (the credentials package passes the keys' last use). Passed in, not imported: audit sits
# below the packages whose changes it records.
AfterInsert = Callable[[Session, list[dict[str, Any]]], None]


@dataclass(frozen=True)
class Destination:
    """Where shipped events go."""

    database_url: str
    after_insert: AfterInsert | None = None


class AuditUnavailable(ServiceUnavailable):
    """The event of a request cannot be journaled: no audit, no access."""

    def __init__(self) -> None:
        super().__init__(
            "audit_unavailable",
            "The audit log cannot record this request now, so it was not served; retry shortly.",
            retry_after=5,
        )


def private_directory(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    return directory


# -- records ---------------------------------------------------------------------------------

_RECORD_START = re.compile(rb"[0-9a-f]{8} \{")


def encode_record(value: dict[str, Any]) -> bytes:
    body = orjson.dumps(value, default=_json_default)
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode_line(line: bytes) -> dict[str, Any] | None:
    """The record on `line`, or None if it is torn or corrupt."""
    if line[8:9] == b" ":
        body = line[9:]
        try:
            if int(line[:8], 16) != zlib.crc32(body):
                return None
            value = orjson.loads(body)
        except (ValueError, orjson.JSONDecodeError):
            return None
    elif line.startswith(b"{"):  # a line written before records had checksums
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
    else:
        return None
    return value if isinstance(value, dict) else None


def decode_records(data: bytes) -> tuple[list[dict[str, Any]], list[tuple[int, bytes]]]:
    """The whole records in `data`, and the torn ones as (offset, bytes).

    A record torn by a crash has no newline, so if anything was appended after it, that
    shares its line: the first checksummed record inside the line is recovered."""
    values, torn = [], []
    position = 0
    for line in data.split(b"\n"):
        start, position = position, position + len(line) + 1
        if not line.strip():
            continue
        value = _decode_line(line)
        if value is not None:
            values.append(value)
            continue
        cut = len(line)
        for match in _RECORD_START.finditer(line, 1):
            value = _decode_line(line[match.start() :])
            if value is not None:
                values.append(value)
                cut = match.start()
                break
        torn.append((start, line[:cut]))
    return values, torn


def _append_durably(path: Path, records: Iterable[bytes]) -> None:
    """Append whole records to `path` (0600) and fsync; raises OSError on any failure."""
    data = b"".join(records)
    if not data:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        start = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            _truncate_quietly(fd, start)
            raise
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)  # may be short: a nearly full disk
        if written <= 0:
            raise OSError(5, "write made no progress")
        view = view[written:]


def _truncate_quietly(fd: int, size: int) -> bool:
    try:
        os.ftruncate(fd, size)
        return True
    except OSError:
        return False


# -- writing -------------------------------------------------------------------------------


class Journal:
    def __init__(
        self, directory: Path, database_url: str, *, fsync: bool = False, after_insert: AfterInsert | None = None
    ):
        self.directory = directory
        self.database_url = database_url
        self.after_insert = after_insert
        self.fsync = fsync
        private_directory(directory)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._records = 0
        self._size = 0  # bytes of whole records in the segment: where the next one starts
        self._pid = 0
        self._sequence = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _open_segment(self) -> int:
        self._sequence += 1
        path = self.directory / f"{os.getpid()}-{self._sequence}-{os.urandom(4).hex()}{ACTIVE}"
        # Created under another name, locked, then renamed: a segment is never visible as
        # `.active` unlocked, where the shipper would take it for a dead writer's and ship
        # and delete it under us (every later event of this worker lost).
        opening = path.with_name(path.name[: -len(ACTIVE)] + OPENING)
        try:
            fd = os.open(opening, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.error("audit journal: cannot create a segment in %s: %s", self.directory, exc)
            raise AuditUnavailable() from exc
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for the segment's life; released by the kernel on death
        try:
            os.rename(opening, path)
        except OSError as exc:
            os.close(fd)
            opening.unlink(missing_ok=True)
            log.error("audit journal: cannot create a segment in %s: %s", self.directory, exc)
            raise AuditUnavailable() from exc
        self._fd, self._path, self._records, self._size, self._pid = fd, path, 0, 0, os.getpid()
        return fd

    def append(self, event: dict[str, Any]) -> None:
        """Journal `event` whole, or raise AuditUnavailable leaving no part of it behind."""
        record = encode_record(event)
        with self._lock:
            fd = self._fd
            if fd is None or self._pid_changed():
                fd = self._open_segment()
            try:
                _write_all(fd, record)
                if self.fsync:
                    os.fsync(fd)
            except OSError as exc:
                log.error("audit journal: event %s not written (%s); the request is refused", event.get("id"), exc)
                self._cut_back(fd)
                raise AuditUnavailable() from exc
            self._size += len(record)
            self._records += 1

    def insert_directly(self, event: dict[str, Any]) -> None:
        """Insert `event` into the database, bypassing the journal that refused it.

        For a change that has already committed: answering 503 would invite a retry that
        repeats the change (an append twice, a second key), and the database that just took
        the change can usually take its event. Raises AuditUnavailable if it cannot.
        Blocks on the database: call it from a thread.
        """
        try:
            _insert_one(Destination(self.database_url, self.after_insert), event)
        except Exception as exc:  # noqa: BLE001 - any failure: the event is not recorded
            log.error("audit journal: event %s not inserted either (%s)", event.get("id"), exc)
            raise AuditUnavailable() from exc
        log.warning("audit journal: event %s inserted directly (the journal refused it)", event.get("id"))

    def _cut_back(self, fd: int) -> None:
        """Remove what a failed write left of its record, so the next record starts clean."""
        if _truncate_quietly(fd, self._size):
            return
        # Not even that: leave this segment to the shipper (readers skip a torn tail).
        self._release_segment()

    def _release_segment(self) -> None:
        fd, path, self._fd, self._path = self._fd, self._path, None, None
        if fd is None or path is None:
            return  # no segment open
        if self._records:
            try:
                os.rename(path, path.with_name(path.name[: -len(ACTIVE)] + READY))
            except OSError:
                pass  # once closed, its flock is free: the shipper claims it as an orphan
        os.close(fd)

    def _pid_changed(self) -> bool:
        # After a fork the child must not share the parent's segment.
        return self._pid != os.getpid()

    def rotate(self) -> None:
        """Hand the current segment to the shipper, if it holds anything."""
        with self._lock:
            if self._fd is None or self._records == 0:
                return
            self._release_segment()

    # -- shipping ------------------------------------------------------------------------

    def flush(self) -> int:
        """Rotate and ship everything shippable now. Returns the number of events shipped."""
        self.rotate()
        return ship_pending(self.directory, self.database_url, own_path=self._path, after_insert=self.after_insert)

    def start(
        self, interval: float = 1.0, *, ship: bool = True, after_ship: Callable[[], object] | None = None
    ) -> None:
        """Every `interval`: rotate the segment, and ship what is ready unless `ship` is
        False (then a separate shipper process does it: `audit.shipper`); then, holding the
        ship lock, run `after_ship` (the audit chainer, audit.chainer)."""

        def loop() -> None:
            failures = 0
            while not self._stop.wait(backoff(interval, failures)):
                try:
                    self.flush() if ship else self.rotate()
                    failures = 0
                except Exception as exc:  # keep the segments; the next round retries
                    failures += 1
                    log.warning("audit shipping failed (%s); will retry", brief_error(exc))
                    continue
                if after_ship is not None:
                    try:  # its failure does not slow shipping down
                        with _ShipLock(self.directory):
                            after_ship()
                    except Exception as exc:
                        log.warning("audit work after shipping failed (%s); will retry", brief_error(exc))

        self._thread = threading.Thread(target=loop, name="tidegate-audit-shipper", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.flush()
        except Exception as exc:  # the segments stay on disk for the next start
            log.warning("audit events left in the journal at shutdown (%s)", brief_error(exc))
        finally:
            with self._lock:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None


def backoff(interval: float, failures: int) -> float:
    """Seconds to wait before the next round: `interval`, doubling per failure, at most MAX_BACKOFF."""
    return interval if failures == 0 else min(MAX_BACKOFF, interval * 2 ** min(failures, 10))


def brief_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value))


# -- shipping --------------------------------------------------------------------------------


def _claim_orphans(directory: Path, own_path: Path | None) -> None:
    """Turn active segments of dead processes into ready ones."""
    for path in directory.glob(f"*{OPENING}"):
        # A writer killed between creating and renaming its segment wrote nothing in it. One
        # still being created is unlocked for an instant too: only stale ones are removed.
        if _older_than(path, STALE_OPENING_SECONDS) and _unlocked(path):
            path.unlink(missing_ok=True)
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


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def _unlocked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


class _ShipLock:
    """One shipper at a time across processes (`ship.lock`, an flock)."""

    def __init__(self, directory: Path):
        self.path = directory / SHIP_LOCK

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def ship_pending(
    directory: Path, database_url: str, *, own_path: Path | None = None, after_insert: AfterInsert | None = None
) -> int:
    """Ship every ready segment (and orphaned active one). Returns the events shipped.

    Raises, leaving the segment and every later one in place, if the database cannot be
    reached or fails: the caller retries later."""
    with _ShipLock(directory):
        _claim_orphans(directory, own_path)
        destination = Destination(database_url, after_insert)
        return sum(_ship_segment(directory, destination, path) for path in sorted(directory.glob(f"*{READY}")))


def is_refusal(exc: BaseException) -> bool:
    """The database refused the events themselves (a value it cannot store), as opposed to
    not being reachable or failing: only then may an event be set aside."""
    return isinstance(exc, (sa_exc.IntegrityError, sa_exc.DataError)) or (
        isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError)
    )  # a value not bindable


def _ship_segment(directory: Path, destination: Destination, path: Path) -> int:
    try:
        values, torn = decode_records(path.read_bytes())
    except FileNotFoundError:
        return 0
    events, unreadable = _as_events(values)
    if events:
        try:
            _insert_events(destination, events)
        except Exception as exc:
            if not is_refusal(exc):
                raise  # down or failing: keep the segment for the next round
            log.warning(
                "audit segment %s refused as a batch (%s); shipping event by event", path.name, brief_error(exc)
            )
            _ship_one_by_one(directory, destination, events)
    # Everything is in the database or kept elsewhere; only now may the segment go.
    _set_aside(directory, unreadable)
    if torn:
        log.error("audit segment %s: %d torn record(s) quarantined in %s", path.name, len(torn), TORN)
        _append_durably(
            directory / TORN,
            (
                encode_record({"segment": path.name, "offset": offset, "bytes": fragment.decode(errors="replace")})
                for offset, fragment in torn
            ),
        )
    path.unlink()
    return len(events)


def _as_events(values: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """Records as insertable events, and those that are not events at all (with why)."""
    events, unreadable = [], []
    for value in values:
        try:
            if not isinstance(value.get("id"), str):
                raise ValueError("no event id")
            event = dict(value, timestamp=datetime.fromisoformat(value["timestamp"]))
        except (KeyError, TypeError, ValueError) as exc:
            unreadable.append((value, f"unreadable event: {exc}"))
            continue
        events.append(event)
    return events, unreadable


def _ship_one_by_one(directory: Path, destination: Destination, events: list[dict[str, Any]]) -> None:
    """One refused event must not block every other: each alone, a refused one once more
    with its text made storable, and if still refused, set aside (kept, never dropped)."""
    refused = []
    for event in events:
        try:
            _insert_one(destination, event)
        except Exception as exc:
            if not is_refusal(exc):
                raise
            refused.append((event, str(getattr(exc, "orig", exc)).splitlines()[0][:500]))
    for event, reason in refused:
        log.error("audit event %s refused by the database (%s); kept in %s", event.get("id"), reason, SET_ASIDE)
    _set_aside(directory, refused)


def _insert_one(destination: Destination, event: dict[str, Any]) -> None:
    try:
        _insert_events(destination, [event])
    except Exception as exc:
        cleaned = storable(dict(event))
        if not is_refusal(exc) or cleaned == event:
            raise
        _insert_events(destination, [cleaned])


def _set_aside(directory: Path, refused: list[tuple[dict[str, Any], str]]) -> None:
    now = datetime.now(UTC).isoformat()
    _append_durably(
        directory / SET_ASIDE,
        (encode_record({"event": event, "reason": reason, "set_aside_at": now}) for event, reason in refused),
    )


def _insert_events(destination: Destination, events: list[dict[str, Any]]) -> None:
    with session_scope(destination.database_url) as session:
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        for start in range(0, len(events), SHIP_BATCH):
            batch = events[start : start + SHIP_BATCH]
            # Core, not ORM, insert: the ORM's per-row bookkeeping doubled the cost per event.
            session.connection().execute(insert(AUDIT_EVENTS).on_conflict_do_nothing(index_elements=["id"]), batch)
        if destination.after_insert is not None:
            destination.after_insert(session, events)


# -- set-aside events and the backlog ----------------------------------------------------------


def _read_set_aside(directory: Path) -> tuple[dict[str, tuple[dict[str, Any], str]], int]:
    """Set-aside events by id (a retried segment may have set one aside twice), and torn records."""
    path = directory / SET_ASIDE
    if not path.exists():
        return {}, 0
    values, torn = decode_records(path.read_bytes())
    kept = {}
    for value in values:
        event, reason = (value["event"], value.get("reason", "")) if "event" in value else (value, "")  # old format
        if isinstance(event, dict):
            kept[str(event.get("id"))] = (event, reason)
    return kept, len(torn)


def reship_set_aside(directory: Path, database_url: str, *, after_insert: AfterInsert | None = None) -> tuple[int, int]:
    """Try the set-aside events again (e.g. after a migration). Returns (shipped, still refused).

    The file is replaced only once the database has the shipped ones: an outage midway
    leaves it as it was."""
    destination = Destination(database_url, after_insert)
    with _ShipLock(directory):
        kept, _ = _read_set_aside(directory)
        events, unreadable = _as_events([event for event, _ in kept.values()])
        still = list(unreadable)
        shipped = 0
        for event in events:
            try:
                _insert_one(destination, event)
                shipped += 1
            except Exception as exc:
                if not is_refusal(exc):
                    raise
                still.append(
                    (
                        dict(event, timestamp=event["timestamp"].isoformat()),
                        str(getattr(exc, "orig", exc)).splitlines()[0][:500],
                    )
                )
        path = directory / SET_ASIDE
        if path.exists():
            replacement = directory / (SET_ASIDE + ".new")
            replacement.unlink(missing_ok=True)
            now = datetime.now(UTC).isoformat()
            _append_durably(
                replacement, (encode_record({"event": e, "reason": r, "set_aside_at": now}) for e, r in still)
            )
            if still:
                os.rename(replacement, path)
            else:
                path.unlink()
        return shipped, len(still)


@dataclass(frozen=True)
class Backlog:
    segments: int
    pending_events: int
    oldest_pending_at: datetime | None
    set_aside_events: int
    torn_records: int

    def view(self, directory: Path) -> dict[str, Any]:
        age = (datetime.now(UTC) - self.oldest_pending_at).total_seconds() if self.oldest_pending_at else None
        return {
            "directory": str(directory),
            "segments": self.segments,
            "pending_events": self.pending_events,
            "oldest_pending_at": self.oldest_pending_at.isoformat() if self.oldest_pending_at else None,
            "oldest_pending_age_seconds": round(age, 1) if age is not None else None,
            "set_aside_events": self.set_aside_events,
            "torn_records": self.torn_records,
        }


def backlog(directory: Path) -> Backlog:
    """What is waiting in the journal: events not yet in the database, set aside, or torn."""
    segments = pending = torn_records = 0
    oldest = None
    for path in [*directory.glob(f"*{ACTIVE}"), *directory.glob(f"*{READY}")]:
        try:
            values, torn = decode_records(path.read_bytes())
        except FileNotFoundError:
            continue  # shipped meanwhile
        segments += 1
        events, _ = _as_events(values)
        pending += len(values)
        torn_records += len(torn)
        for event in events:
            stamp = event["timestamp"]
            stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
            oldest = stamp if oldest is None or stamp < oldest else oldest
    kept, torn_in_set_aside = _read_set_aside(directory)
    quarantined = len(decode_records((directory / TORN).read_bytes())[0]) if (directory / TORN).exists() else 0
    return Backlog(segments, pending, oldest, len(kept), torn_records + torn_in_set_aside + quarantined)
