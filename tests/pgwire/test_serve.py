"""`tidegate serve` with TIDEGATE_PG_PORT: the endpoint in its own process beside the HTTP
workers, its generated certificate's fingerprint printed, audit events shipped, and the
same rows over the wire as through REST."""

from __future__ import annotations

import hashlib
import socket
import ssl
import time

import psycopg
import pytest

from tests.server import free_port, init_home

pytestmark = pytest.mark.slow

ROWS = [{"city": c, "n": i} for i, c in enumerate(["Oslo", "Lima", "Pune", "Kobe"] * 25)]


def _connect(port: int, key: str, org_id: str, deadline: float) -> psycopg.Connection:
    while True:
        try:
            return psycopg.connect(
                host="127.0.0.1", port=port, user="bi", password=key, dbname=org_id, sslmode="require",
                autocommit=True, connect_timeout=5,
            )  # fmt: skip
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_serve_runs_the_endpoint_with_a_generated_certificate(tmp_path):
    pg_port = free_port()
    server = init_home(tmp_path, extra_env={"TIDEGATE_PG_PORT": str(pg_port)})
    server.start()
    try:
        with server.client() as http:
            created = http.post("/sources", json={"name": "cities", "rows": ROWS})
            assert created.status_code == 201, created.text
            rest = http.post(
                f"/sources/{created.json()['id']}/query",
                json={"sql": "SELECT city, count(*) AS c FROM data GROUP BY 1 ORDER BY 1", "page_size": 100},
            ).json()["data"]
        with _connect(pg_port, server.admin_key, server.org_id, time.monotonic() + 60) as conn:
            wire = conn.execute("SELECT city, count(*) AS c FROM cities GROUP BY 1 ORDER BY 1").fetchall()
            assert (
                [(r["city"], r["c"]) for r in rest] == wire == [("Kobe", 25), ("Lima", 25), ("Oslo", 25), ("Pune", 25)]
            )
        # the certificate served is the generated one whose fingerprint the server printed
        der = ssl.PEM_cert_to_DER_cert((server.home / "pgwire-cert.pem").read_text())
        printed = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
        assert printed in server.logs()
        verified = psycopg.connect(
            host="localhost", port=pg_port, user="bi", password=server.admin_key, dbname=server.org_id,
            sslmode="verify-full", sslrootcert=str(server.home / "pgwire-cert.pem"), autocommit=True,
        )  # fmt: skip
        with verified:
            assert verified.execute("SELECT count(*) FROM cities").fetchone() == (100,)
    finally:
        server.stop()
    deadline = time.monotonic() + 15
    while True:  # the endpoint's process stopped with the server
        try:
            socket.create_connection(("127.0.0.1", pg_port), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "the PostgreSQL endpoint outlived the server"
        time.sleep(0.3)
