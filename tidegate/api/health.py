"""What a load balancer and a monitoring system ask a node: `/readyz` and `/metrics`.

(`/healthz`, "the process answers", is in api.app: it checks nothing else.)

`/readyz` checks every dependency a request may need, at once and each within
READY_TIMEOUT_SECONDS: the database (`SELECT 1`), Redis when configured (`PING`), and that
the data and audit directories take a write. 200 `{status: "ready", checks}`, or 503 with
the error envelope naming the first dependency that failed (its outage code, as requests
would get it) and every check's state. Never a URL, host or error text: those go to the log.

`/metrics` is the Prometheus text format, off unless `TIDEGATE_METRICS_TOKEN` is set, and
then only for `Authorization: Bearer <token>` (compared in constant time). Not "loopback
only": behind a reverse proxy on the same host every client arrives from loopback.
"""

from __future__ import annotations

import hmac
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import redis
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text

from tidegate import metrics
from tidegate.api.responses import JSON, error_response
from tidegate.audit.journal import backlog
from tidegate.config import Settings
from tidegate.data import storage
from tidegate.db.engine import get_engine

log = logging.getLogger("tidegate.health")
router = APIRouter(include_in_schema=False)

READY_TIMEOUT_SECONDS = 3.0  # a load balancer's check times out after a few seconds
READY_RETRY_AFTER = 5


@dataclass(frozen=True)
class Check:
    name: str  # in the answer: "database", "redis", "storage", "audit"
    code: str  # the 503's code when it fails: what requests get for that outage
    message: str
    probe: Callable[[], None]  # raises if the dependency is not usable


def _database_probe(database_url: str) -> Callable[[], None]:
    def probe() -> None:
        with get_engine(database_url).connect() as connection:
            connection.execute(text("SELECT 1"))

    return probe


def _redis_probe(redis_url: str) -> Callable[[], None]:
    # One client, built now (it connects on first use and reconnects after an outage).
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)

    def probe() -> None:
        client.ping()

    return probe


def _writable_probe(directory: Path) -> Callable[[], None]:
    def probe() -> None:
        # A real write (not os.access): a full or read-only disk refuses it.
        with tempfile.TemporaryFile(dir=directory) as probe_file:
            probe_file.write(b"ready")
            probe_file.flush()
            os.fsync(probe_file.fileno())

    return probe


def checks_for(settings: Settings) -> tuple[Check, ...]:
    """The node's dependencies, in the order a failure is reported."""
    found = [
        Check("database", "database_unavailable", "the database", _database_probe(settings.database_url)),
    ]
    if settings.redis_url:
        found.append(Check("redis", "rate_limiter_unavailable", "Redis", _redis_probe(settings.redis_url)))
    if settings.object_store.enabled:  # data in the store, read through this node's part cache
        found += [
            Check("object_store", "object_store_unavailable", "the object store", _object_store_probe),
            Check("storage", "storage_unavailable", "the part cache", _writable_probe(settings.part_cache_dir)),
        ]
    else:
        found.append(Check("storage", "storage_unavailable", "the data directory", _writable_probe(settings.data_dir)))
    found.append(Check("audit", "audit_unavailable", "the audit journal", _writable_probe(settings.audit_dir)))
    return tuple(found)


def _object_store_probe() -> None:
    """One listing request under the configured prefix (ObjectStore.check)."""
    configured = storage.object_store()
    if configured is None:
        raise RuntimeError("object store not configured in this process")
    configured[0].check()


async def _run(check: Check, results: dict[str, str]) -> None:
    try:
        with anyio.fail_after(READY_TIMEOUT_SECONDS):
            # abandoned at the deadline: a dependency that hangs must not hang the check
            await anyio.to_thread.run_sync(check.probe, abandon_on_cancel=True)
        results[check.name] = "ok"
    except TimeoutError:
        log.warning("readyz: %s did not answer within %.0f s", check.name, READY_TIMEOUT_SECONDS)
        results[check.name] = "timeout"
    except Exception as exc:  # noqa: BLE001 - whatever fails, the node is not ready
        log.warning("readyz: %s unavailable (%s)", check.name, type(exc).__name__)
        results[check.name] = "unavailable"


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    checks: tuple[Check, ...] = request.app.state.ready_checks
    results: dict[str, str] = {}
    async with anyio.create_task_group() as group:
        for check in checks:
            group.start_soon(_run, check, results)
    ordered = {check.name: results[check.name] for check in checks}
    failed = [check for check in checks if ordered[check.name] != "ok"]
    if not failed:
        return JSON({"status": "ready", "checks": ordered})
    first = failed[0]
    names = ", ".join(check.message for check in failed)
    body = {
        "error": {
            "type": "api_error",
            "code": first.code,
            "message": f"Not ready: {names} unavailable.",
            "retry_after": READY_RETRY_AFTER,
            "unavailable": [check.name for check in failed],
        },
        "status": "not_ready",
        "checks": ordered,
    }
    return JSON(body, status_code=503, headers={"Retry-After": str(READY_RETRY_AFTER)})


# -- /metrics ------------------------------------------------------------------------------


class NodeCollector(Collector):
    """What is read at scrape time rather than counted: the node's audit journal backlog."""

    def __init__(self, audit_dir: Path):
        self.audit_dir = audit_dir

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            waiting = backlog(self.audit_dir)
        except OSError:
            return  # the directory cannot be read: /readyz says so; no made-up numbers here
        yield GaugeMetricFamily(
            "tidegate_audit_backlog_events",
            "Audit events journaled on this node, not yet in the database.",
            value=waiting.pending_events,
        )
        age = 0.0
        if waiting.oldest_pending_at is not None:
            age = max(0.0, (datetime.now(UTC) - waiting.oldest_pending_at).total_seconds())
        yield GaugeMetricFamily(
            "tidegate_audit_backlog_oldest_age_seconds",
            "Age of the oldest audit event not yet shipped (0: none).",
            value=age,
        )
        yield GaugeMetricFamily(
            "tidegate_audit_set_aside_events",
            "Audit events the database refused, kept in audit/rejected.jsonl.",
            value=waiting.set_aside_events,
        )
        yield GaugeMetricFamily(
            "tidegate_audit_torn_records",
            "Torn (checksum-failed) audit journal records found.",
            value=waiting.torn_records,
        )


def _forget_dead_processes(directory: Path) -> None:
    """Drop the live gauges (query pool use) of worker processes that died (uvicorn replaces
    a worker it killed; its files stay, and a livesum would count them forever)."""
    for path in directory.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(int(pid), str(directory))
        except PermissionError:
            pass  # alive, another user's


def exposition(settings: Settings) -> bytes:
    metrics.flush()  # this process's latest counts (the others flush within a second)
    registry = CollectorRegistry(auto_describe=False)
    if metrics.is_multiprocess():
        _forget_dead_processes(settings.metrics_dir)
        multiprocess.MultiProcessCollector(registry, path=str(settings.metrics_dir))
        metrics.instruments()  # this process's unlabelled gauges exist, even before its first query
    else:
        registry = metrics.instruments().registry
    node = CollectorRegistry(auto_describe=False)
    node.register(NodeCollector(settings.audit_dir))
    return generate_latest(registry) + generate_latest(node)


def _metrics_refusal(settings: Settings, authorization: str | None) -> Response | None:
    if settings.metrics_token is None:
        return error_response(
            404, "not_found_error", "metrics_disabled", "Metrics are off: set TIDEGATE_METRICS_TOKEN to serve them."
        )
    scheme, _, token = (authorization or "").partition(" ")
    presented = token.strip().encode() if scheme.lower() == "bearer" else b""
    if not hmac.compare_digest(presented, settings.metrics_token.encode()):
        return error_response(
            401,
            "authentication_error",
            "invalid_metrics_token",
            "Send 'Authorization: Bearer <TIDEGATE_METRICS_TOKEN>' to read the metrics.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return None


@router.get("/metrics")
async def read_metrics(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    refused = _metrics_refusal(settings, request.headers.get("authorization"))
    if refused is not None:
        return refused
    body = await anyio.to_thread.run_sync(exposition, settings)  # reads files: not on the event loop
    return Response(body, media_type=CONTENT_TYPE_LATEST)
