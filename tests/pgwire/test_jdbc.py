"""The PostgreSQL JDBC driver (Debian's libpostgresql-jdbc-java) against the endpoint: schema
metadata (tables, columns, primary keys), a server-prepared statement past the driver's prepareThreshold (binary results),
a fetch-size cursor (portal with a row limit), and a refused write."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.pgwire.conftest import PRODUCTS, SALES, World

JAR = Path("/usr/share/java/postgresql.jar")
SOURCE = Path(__file__).parent / "jdbc" / "TidegateJdbc.java"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None or not JAR.exists(), reason="java or the JDBC driver missing"),
]


def test_the_jdbc_driver_reads_metadata_prepared_statements_and_fetches(world: World):
    world.source(SALES, "sales")
    world.source(PRODUCTS, "products")
    world.big_source(20_000)
    run = subprocess.run(
        ["java", "-cp", str(JAR), str(SOURCE), str(world.port), world.org_id, world.key()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    out = dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line)
    assert out["tables"] == "big,products,sales"
    assert out["columns"] == "region:text,product:text,amount:int8"
    assert out["keys"] == ""  # none exist
    assert out["prepared"] == "2:30 2:12 2:30 2:12 2:30 2:12 2:30"
    assert out["fetched"] == f"20000:{sum(range(20_000))}"
    assert out["write"] == "25006"
