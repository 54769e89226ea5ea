"""kill -9 of `tidegate serve --workers 2` (supervisor, workers and shipper at once) while
clients append rows, replace a source's data and read: after a restart every acknowledged
append is present exactly once and whole, the replaced source holds one whole version (the
last acknowledged or a later one), and every answered request has exactly one audit event.

(tests/data/test_storage.py kills a writer at each step of a single write in-process;
tests/test_processes.py kills a server answering reads. This is the two together, through
the HTTP API, with concurrent writers.)
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from figures import report
from server import init_home
from traffic import START, Traffic, wait_for_events

pytestmark = pytest.mark.slow

APPEND_ROWS = 3
VERSION_ROWS = 10


def test_kill_9_during_appends_and_replaces_loses_no_acknowledged_write(tmp_path):
    srv = init_home(tmp_path)
    try:
        srv.start(workers=2, timeout=START)
        _, secret = srv.new_admin_key(10_000)
        with srv.client(secret) as http:
            ledger = http.post("/sources", json={"name": "ledger", "rows": [{"batch": "seed", "i": 0}]}).json()
            snapshot = http.post(
                "/sources", json={"name": "snapshot", "rows": [{"version": 0, "i": i} for i in range(VERSION_ROWS)]}
            ).json()

        def send(client, index, n):
            if index in (0, 1):  # appenders: a batch of rows unique to this request
                return client.post(
                    f"/api/v1/sources/{ledger['id']}/rows",
                    json={"rows": [{"batch": f"{round_}-{index}-{n}", "i": i} for i in range(APPEND_ROWS)]},
                )
            if index == 2:  # a replacer: version n, whole
                return client.put(
                    f"/api/v1/sources/{snapshot['id']}/data",
                    json={"rows": [{"version": round_ * 100_000 + n, "i": i} for i in range(VERSION_ROWS)]},
                )
            return client.get(f"/api/v1/sources/{ledger['id']}/data", params={"page_size": 5})

        rounds, answers, tagged = 2, [], []
        for round_ in range(rounds):
            with Traffic(srv.url, srv.headers(secret), send, pause=0.0) as traffic:
                assert traffic.wait_for(lambda a: a.status == 200 and a.sender[0] == 2, 20) is not None
                time.sleep(1.5)
                srv.kill()  # in the middle of appends and replaces
                time.sleep(0.3)
            answers += traffic.snapshot()
            tagged += [(round_, a) for a in traffic.snapshot()]
            killed_at = time.monotonic()
            srv.start(workers=2, timeout=START)
            restart_s = time.monotonic() - killed_at

        acknowledged = [a for a in answers if a.status is not None]
        assert not [a for a in acknowledged if a.status >= 500], Counter(a.status for a in acknowledged)
        with srv.client(secret) as http:
            rows = http.get(f"/sources/{ledger['id']}/data", params={"page_size": 10_000}).json()["data"]
            versions = http.get(f"/sources/{snapshot['id']}/data", params={"page_size": 10_000}).json()["data"]
        batches = Counter(row["batch"] for row in rows)
        appended = {f"{r}-{a.sender[0]}-{a.sender[1]}" for r, a in tagged if a.status == 200 and a.sender[0] in (0, 1)}
        missing = [b for b in appended if batches[b] == 0]
        assert not missing, f"{len(missing)} acknowledged appends lost"
        wrong = {batch: count for batch, count in batches.items() if batch != "seed" and count != APPEND_ROWS}
        assert not wrong, f"appends partial or doubled: {wrong}"
        # One whole version, never a mix, and never older than the last acknowledged one.
        present = {row["version"] for row in versions}
        assert len(present) == 1 and len(versions) == VERSION_ROWS, (present, len(versions))
        replaced = [r * 100_000 + a.sender[1] for r, a in tagged if a.sender[0] == 2 and a.status == 200]
        assert present.pop() >= max(replaced)
        figures = {
            "requests": len(answers),
            "answered": len(acknowledged),
            "5xx": 0,
            "appends_acknowledged": len(appended),
            "replaces_acknowledged": len(replaced),
            "restart_s": round(restart_s, 2),
        }
        figures |= wait_for_events(srv, [a.request_id for a in acknowledged], [])
        report("kill -9 during appends and replaces", figures)
    finally:
        srv.stop()
