"""Benchmark: writing and first-reading a source version on an object store vs local disk.

Writes the same N-row table as a new version on local disk and on an S3-compatible store
(moto's server on loopback, from build/s3server: `make clients`), then times, per backend:
the write (Parquet + upload before the commit), a node's first read of the version (for the
store: download into the part cache) and a read once cached, each the version's parts read
whole into Arrow from the local paths the engine hands DuckDB. Prints seconds and the ratio to local disk, in the
same run. Loopback only; moto is an in-memory Python server, far slower than S3 or MinIO,
so the store's figures are an upper bound on the overhead.

    .venv/bin/python bench/object_storage.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

import tidegate.tables  # noqa: F401  (registers every table)
from tidegate.catalog.models import Source, SourceVersion
from tidegate.config import ObjectStoreSettings
from tidegate.data import storage
from tidegate.db.base import Base, utcnow
from tidegate.ids import new_id
from tidegate.orgs.models import Organization, User

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "build" / "s3server")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto did not start (make clients installs it into build/s3server)")


def table_of(rows: int) -> pa.Table:
    ids = pa.array(range(rows), pa.int64())
    return pa.table(
        {
            "id": ids,
            "region": pa.array(["US", "EU", "APAC", "LATAM"] * (rows // 4) + ["US"] * (rows % 4)),
            "amount": pc.multiply(ids, 3),
            "note": pa.array([f"row {i}" for i in range(rows)]),
        }
    )


def timed(action) -> tuple[float, object]:
    start = time.perf_counter()
    value = action()
    return time.perf_counter() - start, value


def run(rows: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tidegate-bench-s3-"))
    port = free_port()
    moto = start_moto(port)
    try:
        httpx.put(f"http://127.0.0.1:{port}/bench").raise_for_status()
        db = create_engine(f"sqlite:///{tmp / 'bench.db'}")
        Base.metadata.create_all(db)
        Session = sessionmaker(db, expire_on_commit=False)  # noqa: N806
        with Session.begin() as session:
            org = Organization(id=new_id("org"), name="bench")
            user = User(id=new_id("usr"), org_id=org.id, email="b@example.com", role="admin")
            session.add_all([org, user])
        table = table_of(rows)
        pq.write_table(table, tmp / "warm-up.parquet", compression="zstd")  # pyarrow's first use, untimed
        pq.read_table(tmp / "warm-up.parquet")
        store = ObjectStoreSettings(
            url="s3://bench/data", endpoint_url=f"http://127.0.0.1:{port}", access_key_id="k", secret_access_key="s"
        )
        results: dict[str, dict[str, float]] = {}
        for name, settings in (("local disk", None), ("object store", store)):
            storage.configure(tmp / name / "data", object_store=settings, part_cache_dir=tmp / name / "cache")

            def write(name: str = name) -> str:
                with Session.begin() as session:
                    source = Source(
                        id=new_id("src"),
                        org_id=org.id,
                        name=f"bench-{name}",
                        created_by=user.id,
                        created_at=utcnow(),
                        updated_at=utcnow(),
                    )
                    session.add(source)
                    session.flush()
                    return storage.write_new_version(session, source, table, append=False).id

            write_s, version_id = timed(write)
            with Session() as session:
                version = session.get(SourceVersion, version_id)
            if settings is not None:  # a second node: its cache starts empty
                for part in (tmp / name / "cache").rglob("*.parquet"):
                    part.unlink()

            def read(version: SourceVersion = version) -> int:  # the local paths DuckDB gets, read
                with storage.readable_parts(version) as paths:
                    return pq.read_table(paths).num_rows

            first_s, counted = timed(read)
            cached_s, _ = timed(read)
            assert counted == rows, counted
            cache = storage.object_store()
            assert settings is None or (cache is not None and cache[1].downloads == 1)  # really fetched once
            results[name] = {"write": write_s, "first read": first_s, "cached read": cached_s}
        storage.configure(None)
        parquet_bytes = sum(p.stat().st_size for p in (tmp / "local disk" / "data").rglob("*.parquet"))
        local = results["local disk"]
        print(f"{rows:,} rows, {parquet_bytes:,} bytes of Parquet")
        print(f"{'':14}{'write':>16}{'first read':>22}{'cached read':>22}")
        for name, figures in results.items():
            cells = "".join(f"{figures[k]:>10.3f} s ({figures[k] / local[k]:4.1f}x)" for k in local)
            print(f"{name:14}{cells}")
    finally:
        moto.kill()
        moto.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    run(parser.parse_args().rows)
