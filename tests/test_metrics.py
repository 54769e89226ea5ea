"""tidegate.metrics: counts batched in memory reach prometheus-client exactly as direct
observations would (the histogram is handed over through its bucket values)."""

from __future__ import annotations

import uuid

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from tidegate import metrics


def series(text: str, name: str, route: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.startswith(name) and f'route="{route}"' in line)


def test_batched_latencies_expose_as_prometheus_client_observations():
    route = f"/test/{uuid.uuid4().hex}"  # a series of this test's own
    durations = [0.0004, 0.001, 0.0011, 0.003, 0.25, 0.2500001, 7.0, 29.9, 31.0, 120.0]
    for seconds in durations:
        metrics.request_done(route, "GET", 200, seconds)
    metrics.flush()
    ours = generate_latest(metrics.instruments().registry).decode()

    reference = CollectorRegistry()
    histogram = Histogram(
        "tidegate_http_request_duration_seconds", "x", ("route",), buckets=metrics.LATENCY_BUCKETS, registry=reference
    )
    for seconds in durations:
        histogram.labels(route).observe(seconds)
    theirs = generate_latest(reference).decode()
    for suffix in ("_bucket", "_count", "_sum"):
        name = "tidegate_http_request_duration_seconds" + suffix
        assert series(ours, name, route) == series(theirs, name, route), suffix
    assert f'tidegate_http_requests_total{{method="GET",route="{route}",status="2xx"}} 10.0' in ours


def test_label_values_come_from_fixed_sets():
    route = f"/test/{uuid.uuid4().hex}"
    metrics.request_done(route, "BREW", 999, 0.01)  # a method and a status no one should label by
    metrics.request_done(None, "GET", 404, 0.01)
    metrics.flush()
    text = generate_latest(metrics.instruments().registry).decode()
    assert f'tidegate_http_requests_total{{method="other",route="{route}",status="other"}} 1.0' in text
    assert 'route="unmatched",status="4xx"' in text
    assert "BREW" not in text and '"999"' not in text
