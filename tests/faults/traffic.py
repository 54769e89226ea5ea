"""Steady request traffic against a running server while a fault is injected, and the
checks every fault test makes of what the clients were answered."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx

# A dependency back up must be serving again within this many seconds (the pool's pre-ping,
# redis-py's reconnect and the shipper's backoff are all well inside it).
RECOVERY_BOUND = 15.0


@dataclass(frozen=True)
class Answer:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer at all (connection dropped or refused)
    request_id: str | None
    code: str | None
    retry_after: str | None
    failure: str | None = None
    sender: tuple[int, int] = (0, 0)  # (thread index, its request number): what was sent


def _answer(started: float, resp: httpx.Response, sender: tuple[int, int]) -> Answer:
    code = None
    if resp.status_code >= 400:
        try:
            code = resp.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = "<no envelope>"
    return Answer(
        started,
        time.monotonic(),
        resp.status_code,
        resp.headers.get("x-request-id"),
        code,
        resp.headers.get("retry-after"),
        sender=sender,
    )


class Traffic:
    """`threads` clients each sending `send(client, n)` in a loop until stopped."""

    def __init__(self, base_url: str, headers: dict[str, str], send, threads: int = 4, pause: float = 0.01):
        self.base_url, self.headers, self.send = base_url, headers, send
        self.threads, self.pause = threads, pause
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=20) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                started = time.monotonic()
                try:
                    answer = _answer(started, self.send(client, index, n), (index, n))
                except httpx.HTTPError as exc:
                    answer = Answer(
                        started, time.monotonic(), None, None, None, None, f"{type(exc).__name__}: {exc}", (index, n)
                    )
                with self._lock:
                    self.answers.append(answer)
                time.sleep(self.pause)

    def __enter__(self) -> Traffic:
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def through_outage(self, take_down, bring_back, held: float, logs, what: str = "the outage") -> Outage:
        """Serving (a 200), then `take_down()`; once a request answers 503, `held` seconds later
        `bring_back()`; then serving again within RECOVERY_BOUND, and a little more traffic."""
        assert self.wait_for(lambda a: a.status == 200, 20) is not None
        time.sleep(1.0)
        down_at = time.monotonic()
        take_down()
        assert self.wait_for(lambda a: a.status == 503, 10) is not None, f"no request noticed {what}"
        time.sleep(held)
        bring_back()
        up_at = time.monotonic()
        assert self.wait_for(lambda a: a.status == 200, RECOVERY_BOUND) is not None, logs()[-3000:]
        time.sleep(1.5)
        return Outage(down_at, up_at)

    def wait_for(self, condition, timeout: float) -> float | None:
        """Seconds until some answer after now satisfies `condition`, or None after `timeout`."""
        since = time.monotonic()
        while time.monotonic() - since < timeout:
            if any(a.started >= since and condition(a) for a in self.snapshot()):
                return time.monotonic() - since
            time.sleep(0.05)
        return None


@dataclass
class Outage:
    """When the dependency went down and came back (monotonic seconds)."""

    down_at: float
    up_at: float


def check_answers(answers: list[Answer], outage: Outage, allowed_codes: set[str]) -> dict:
    """Every request got an HTTP answer; never a 500; 503 (with Retry-After and one of
    `allowed_codes`) only while the dependency was down (or until RECOVERY_BOUND after);
    and the server served again by itself. Returns the figures for the report."""
    dropped = [a for a in answers if a.status is None]
    assert not dropped, f"{len(dropped)} requests got no HTTP answer, e.g. {dropped[0].failure}"
    server_errors = Counter(a.status for a in answers if a.status >= 500 and a.status != 503)
    assert not server_errors, f"5xx other than 503: {server_errors}"
    unavailable = [a for a in answers if a.status == 503]
    assert all(a.retry_after and int(a.retry_after) >= 1 for a in unavailable), "a 503 without Retry-After"
    codes = Counter(a.code for a in unavailable)
    assert set(codes) <= allowed_codes, codes
    outside = [a for a in unavailable if a.ended < outage.down_at or a.started > outage.up_at + RECOVERY_BOUND]
    assert not outside, f"{len(outside)} 503s while the dependency was up"
    served_after = [a for a in answers if a.status < 500 and a.started >= outage.up_at]
    assert served_after, "no request was served after the dependency came back"
    # Recovery: from the dependency being back to the first request served after the last 503.
    last_503 = max((a.ended for a in unavailable), default=outage.up_at)
    recovered = min((a.ended for a in served_after if a.started >= last_503), default=None)
    assert recovered is not None, "the server did not recover"
    return {
        "requests": len(answers),
        "503": len(unavailable),
        "other 5xx": 0,
        "dropped": 0,
        "codes": dict(codes),
        "recovery_s": round(max(0.0, recovered - outage.up_at), 2),
    }


# The event of the request itself (the middleware's, which has the method), not the lifecycle
# events a write records under the same request id.
REQUEST_EVENT = "method IS NOT NULL"


def stored_event_counts(database_url: str | None, sqlite_path, request_ids: list[str]) -> Counter:
    """How many audit events each request id has in the server's database."""
    counts: Counter = Counter()
    for start in range(0, len(request_ids), 500):
        chunk = request_ids[start : start + 500]
        if database_url:
            import psycopg

            with psycopg.connect(database_url, connect_timeout=5) as db:
                rows = db.execute(
                    f"SELECT request_id FROM audit_events WHERE {REQUEST_EVENT} AND request_id = ANY(%s)", (chunk,)
                ).fetchall()
        else:
            db = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True, timeout=30)
            try:
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT request_id FROM audit_events WHERE {REQUEST_EVENT} AND request_id IN ({marks})", chunk
                ).fetchall()
            finally:
                db.close()
        counts.update(row[0] for row in rows)
    return counts


def wait_for_events(srv, required: list[str], optional: list[str], timeout: float = 30.0) -> dict:
    """Every `required` request id has exactly one event and no `optional` one has two;
    waits (bounded) for the shipper. Returns figures for the report."""
    database_url = srv.env.get("TIDEGATE_DATABASE_URL")
    deadline = time.monotonic() + timeout
    while True:
        counts = stored_event_counts(database_url, srv.home / "tidegate.db", required + optional)
        missing = [rid for rid in required if counts[rid] == 0]
        duplicated = [rid for rid, n in counts.items() if n > 1]
        assert not duplicated, f"{len(duplicated)} requests have more than one audit event"
        if not missing:
            return {
                "events_required": len(required),
                "events_lost": 0,
                "503_with_event": sum(1 for rid in optional if counts[rid]),
            }
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(missing)} of {len(required)} answered requests have no audit event "
                f"after {timeout}s\n{srv.logs()[-3000:]}"
            )
        time.sleep(0.25)


# Starting `tidegate serve` on a busy machine (other suites running beside this one) can
# take far longer than the usual few seconds; bounded all the same.
START = 150.0
