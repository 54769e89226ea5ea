"""A full disk under load: TIDEGATE_HOME (SQLite, audit journal, data files) on a small
tmpfs that the test fills. Requests get 503 with Retry-After (never a 500, never a dropped
connection), no torn audit record survives, and once space is freed the server serves
again by itself: every acknowledged request has its audit event, every acknowledged append
its rows, exactly once.
"""

from __future__ import annotations

import errno
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from figures import report
from server import Server, base_env, run_cli
from traffic import START, Traffic, check_answers, wait_for_events

pytestmark = pytest.mark.slow

DISK_CODES = {"audit_unavailable", "storage_unavailable", "database_unavailable"}


def init_home_at(home: Path) -> Server:
    """`tidegate init` in `home` itself (a link into the small disk: the server's logs, kept
    beside the home, stay on the real disk)."""
    env = base_env(home)
    info = json.loads(run_cli(env, "init", "--json", "--org-name", "Acme", "--admin-email", "admin@example.com").stdout)
    return Server(
        home=home,
        env=env,
        org_id=info["org_id"],
        admin_user_id=info["admin_user_id"],
        admin_email=info["admin_email"],
        admin_key=info["key"],
        admin_key_id=info["key_id"],
    )


def fill(directory: Path) -> Path:
    """Write until the disk refuses; the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * (256 * 1024)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                if len(chunk) == 1:
                    return filler
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)


def test_a_full_disk_is_503_without_torn_records_then_recovers(small_disk, tmp_path):
    home = tmp_path / "home"
    home.symlink_to(small_disk)
    srv = init_home_at(home)
    try:
        srv.start(workers=2, timeout=START)
        _, secret = srv.new_admin_key(10_000)
        with srv.client(secret) as http:
            source = http.post("/sources", json={"name": "ledger", "rows": [{"batch": "seed", "i": 0}]}).json()

        def send(client, index, n):
            if index == 0:  # a writer: each append is a batch of 3 rows, unique per request
                return client.post(
                    f"/api/v1/sources/{source['id']}/rows",
                    json={"rows": [{"batch": f"b{n}", "i": i} for i in range(3)]},
                )
            return client.get("/api/v1/keys", params={"limit": 1})

        with Traffic(srv.url, srv.headers(secret), send) as traffic:
            fillers = []
            outage = traffic.through_outage(
                lambda: fillers.append(fill(small_disk)), lambda: fillers.pop().unlink(), 2.0, srv.logs, "the full disk"
            )
        answers = traffic.snapshot()
        figures = check_answers(answers, outage, DISK_CODES)
        served = [a for a in answers if a.status < 500]
        figures |= wait_for_events(
            srv, [a.request_id for a in served], [a.request_id for a in answers if a.status == 503]
        )
        status = json.loads(srv.cli("audit", "status", "--json").stdout)
        assert status["torn_records"] == 0 and status["set_aside_events"] == 0, status

        # Every acknowledged append is there once, whole; a refused one never in part.
        with srv.client(secret) as http:
            page = http.get(f"/sources/{source['id']}/data", params={"page_size": 10_000})
        assert page.status_code == 200, page.text
        rows = Counter(row["batch"] for row in page.json()["data"])
        acknowledged = {f"b{a.sender[1]}" for a in served if a.sender[0] == 0 and a.status == 200}
        assert all(rows[batch] == 3 for batch in acknowledged), "an acknowledged append is missing or partial"
        assert all(count == 3 for batch, count in rows.items() if batch != "seed"), "a partial append"
        figures["appends_acknowledged"] = len(acknowledged)
        report("full disk under load", figures)
    finally:
        srv.stop()
