"""The chain under `tidegate serve` with two workers: the shipper process chains the
events of both workers in one order, and signs every moved head when the server stops, so
`tidegate audit verify` (a separate process) finds the whole log signed."""

from __future__ import annotations

import json
import time

import pytest
from server import run_cli, running_server

pytestmark = pytest.mark.slow


def test_serve_chains_workers_events_and_signs_at_shutdown(tmp_path):
    with running_server(tmp_path, workers=2) as srv:
        with srv.client() as http:
            for _ in range(20):
                assert http.get("/keys").status_code == 200
            key = http.get("/audit/public-key").json()["public_key"]
        deadline = time.monotonic() + 30
        while True:  # chained by the shipper process (not by a request's flush)
            report = json.loads(run_cli(srv.env, "audit", "verify", "--org", srv.org_id, "--json").stdout)[0]
            if report["events"] >= 20 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert report["ok"] and report["events"] >= 20, report
        srv.stop()
        after_stop = json.loads(run_cli(srv.env, "audit", "verify", "--org", srv.org_id, "--json").stdout)[0]
        assert after_stop["ok"], after_stop
        # Signed at shutdown: nothing left unsigned, every event chained.
        assert after_stop["unsigned"] == 0 and after_stop["verified_seq"] == after_stop["last_seq"]
        assert not after_stop["notes"], after_stop["notes"]
        printed = run_cli(srv.env, "audit", "public-key").stdout.strip()
        assert printed == key
