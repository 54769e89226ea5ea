"""The server's Prometheus metrics (prometheus-client), recorded wherever things happen.

Labels never carry an organization, key, user or source id, nor a raw path: a route is
named by its template (`/api/v1/keys/{key_id}`), a refusal by its error code, a cache by
its name. Every label value comes from a fixed, small set, so a caller cannot grow the
series (or learn ids) by sending odd requests.

Under `tidegate serve` every worker process writes its values to memory-mapped files in
one directory (prometheus-client's multiprocess mode: the CLI empties `Settings.metrics_dir`
and names it in `PROMETHEUS_MULTIPROC_DIR` for its workers, which prometheus-client reads
when it is imported), and `/metrics` adds them up across the node's processes. The
instruments are made on first use, not at import: the single-worker server runs in the CLI's
own process, which imported prometheus-client before it chose the directory
(`enable_multiprocess`).
"""

from __future__ import annotations

import atexit
import bisect
import os
import threading
import time
from collections.abc import Hashable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable
# Request latency buckets, seconds: a cached page is ~0.3 ms, a query up to its deadline.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"  # no route: never the path itself (unbounded, may hold ids)


def is_multiprocess() -> bool:
    """Values are kept in files that every process of the node adds to (under `tidegate serve`)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def enable_multiprocess() -> None:
    """Keep this process's values in the multiprocess directory too (the CLI has just set
    MULTIPROCESS_ENV; prometheus-client chose its value class when it was imported). Before
    any instrument is made."""
    if _instruments is not None:
        raise RuntimeError("metrics were recorded before multiprocess mode was chosen")
    if not is_multiprocess():
        values.ValueClass = values.MultiProcessValue()


class _Instruments:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tidegate_http_requests",
            "HTTP requests answered, by route template, method and status class (2xx, 4xx, 5xx ...).",
            ("route", "method", "status"),
            registry=r,
        )
        self.latency = Histogram(
            "tidegate_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.key_checks = Counter(
            "tidegate_key_checks",
            "Credential checks of /api/v1 requests (key or embed session): ok, or refused with the refusal's code.",
            ("credential", "outcome", "reason"),
            registry=r,
        )
        self.cache = Counter(
            "tidegate_cache_lookups",
            "Lookups in the server's in-process caches, by cache and hit or miss.",
            ("cache", "result"),
            registry=r,
        )
        self.query_admitted = Gauge(
            "tidegate_query_pool_admitted",
            "SQL queries running or waiting in the query pools (summed over live worker processes).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.query_capacity = Gauge(
            "tidegate_query_pool_capacity",
            "SQL queries the query pools admit at once (running or waiting; summed over live worker processes).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.query_refusals = Counter(
            "tidegate_query_pool_refusals",
            "Queries refused with 429 too_many_concurrent_queries, by the limit that was full (key, org, server).",
            ("limit",),
            registry=r,
        )
        # Children by label values: .labels() costs ~1.5 us (validation, a lock); a dict hit ~0.1.
        self._children: dict[tuple[Hashable, ...], Any] = {}
        self._lock = threading.Lock()

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            with self._lock:
                found = self._children.setdefault(key, metric.labels(*labels))
        return found


_instruments: _Instruments | None = None
_create_lock = threading.Lock()


def instruments() -> _Instruments:
    global _instruments
    if _instruments is None:
        with _create_lock:
            if _instruments is None:
                _instruments = _Instruments()
    return _instruments


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


# -- counting on the request path: in memory, flushed to the instruments once a second -------
#
# A value written straight to prometheus-client costs 1-3 us in multiprocess mode (a lock, a
# pid check, a write to the memory-mapped file; a histogram two of them): measured, +20-40 us
# a page read (bench/metrics_cost.py). Here a request adds to a dict under one lock, and a
# thread per process hands the sums to the instruments every FLUSH_SECONDS. So /metrics may be
# up to that far behind for the other processes of the node (the one answering flushes first).

FLUSH_SECONDS = 1.0
_BUCKETS = len(LATENCY_BUCKETS) + 1  # + Inf


class _Pending:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, ...], int] = {}  # (instrument attribute, *label values) -> count
        self.latency: dict[str, list[float]] = {}  # route -> per-bucket counts (not cumulative), then the sum
        self.flushing = False  # this process has its flusher thread


_pending = _Pending()


def _forked() -> None:
    # A forked child has the parent's pending counts (the parent flushes them) and no thread.
    global _pending
    _pending = _Pending()


os.register_at_fork(after_in_child=_forked)


def _count(key: tuple[str, ...]) -> None:
    pending = _pending
    if not pending.flushing:
        _start_flusher()
    with pending.lock:
        pending.counts[key] = pending.counts.get(key, 0) + 1


def _start_flusher() -> None:
    with _create_lock:
        if _pending.flushing:
            return
        _pending.flushing = True  # (the one place that sets it: under the lock)
    threading.Thread(target=_flush_forever, name="tidegate-metrics", daemon=True).start()
    atexit.register(flush)


def _flush_forever() -> None:
    while True:
        time.sleep(FLUSH_SECONDS)
        flush()


def flush() -> None:
    """Hand what this process counted since the last flush to the instruments."""
    pending = _pending
    with pending.lock:
        counts, pending.counts = pending.counts, {}
        latency, pending.latency = pending.latency, {}
    if not counts and not latency:
        return
    m = instruments()
    for (name, *labels), count in counts.items():
        m.child(getattr(m, name), *labels).inc(count)
    for route, observed in latency.items():
        child = m.child(m.latency, route)
        # prometheus-client has no bulk observe: its (non-cumulative) bucket values, as
        # observe() increments them (tests/api/test_health_metrics.py checks the exposition).
        child._sum.inc(observed[_BUCKETS])
        for index in range(_BUCKETS):
            if observed[index]:
                child._buckets[index].inc(observed[index])


def request_done(route: str | None, method: str, status: int, seconds: float) -> None:
    """One answered HTTP request. `route` is the matched route's template (None: no route)."""
    route = route or UNMATCHED_ROUTE
    key = ("requests", route, method if method in METHODS else "other", status_class(status))
    bucket = bisect.bisect_left(LATENCY_BUCKETS, seconds)  # the first bound >= seconds (or +Inf)
    pending = _pending
    if not pending.flushing:
        _start_flusher()
    with pending.lock:
        pending.counts[key] = pending.counts.get(key, 0) + 1
        observed = pending.latency.get(route)
        if observed is None:
            observed = pending.latency[route] = [0.0] * (_BUCKETS + 1)
        observed[bucket] += 1
        observed[_BUCKETS] += seconds


def key_check(credential: str, reason: str | None) -> None:
    """A credential check: `reason` None when it passed, else the refusal's error code."""
    _count(("key_checks", credential, "ok" if reason is None else "refused", reason or ""))


def cache_lookup(cache: str, hit: bool) -> None:
    _count(("cache", cache, "hit" if hit else "miss"))


def query_pool_capacity(capacity: int) -> None:
    instruments().query_capacity.set(capacity)


def query_admitted(delta: int) -> None:
    instruments().query_admitted.inc(delta)


def query_refused(limit: str) -> None:
    m = instruments()
    m.child(m.query_refusals, limit).inc()
