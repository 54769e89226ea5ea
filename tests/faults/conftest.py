"""The fault suite's private dependencies: its own PostgreSQL cluster, its own Redis, and a
small filesystem it can fill. The machine's shared PostgreSQL and Redis are never touched.

Every fixture starts what it needs on a free loopback port in a temporary directory and
removes it afterwards; every wait is bounded. Without the PostgreSQL binaries, redis-server
or the right to mount a tmpfs (tests run as root), a test is skipped with the reason
printed (and fails under CI=true, which must run it).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: server.py

from server import free_port, unavailable  # noqa: E402

PG_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
WAIT = 30  # seconds, for any start or stop


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl), run as the `postgres` OS user when
    we are root (initdb refuses root), on 127.0.0.1:<free port>, trust authentication."""

    def __init__(self, bin_dir: str):
        self.bin = Path(bin_dir)
        self.root = Path(tempfile.mkdtemp(prefix="tidegate-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str, timeout: float = WAIT) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stdout}{done.stderr}{self.logs()[-2000:]}")

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def init(self) -> PrivatePostgres:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", timeout=120
        )
        return self.start()

    def start(self) -> PrivatePostgres:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", str(WAIT), "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(WAIT), "stop")

    def restart(self, mode: str = "fast") -> None:
        # Not `pg_ctl restart`: that forgets -l, and the server would then hold our stdout pipe.
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        name = f"tidegate_faults_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def private_postgres():
    if not PG_BINS or not shutil.which("runuser"):
        unavailable("PostgreSQL binaries (initdb, pg_ctl)", FileNotFoundError("/usr/lib/postgresql/*/bin"))
    cluster = PrivatePostgres(PG_BINS[-1])
    try:
        cluster.init()
    except Exception as exc:  # noqa: BLE001
        cluster.remove()
        unavailable("a private PostgreSQL cluster", exc)
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def postgres(private_postgres):
    """The private cluster, running (a test before may have stopped it)."""
    if not private_postgres.running():
        private_postgres.start()
    yield private_postgres
    if not private_postgres.running():
        private_postgres.start()


class PrivateRedis:
    def __init__(self):
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def private_redis():
    if not shutil.which("redis-server"):
        unavailable("redis-server", FileNotFoundError("redis-server"))
    store = PrivateRedis().start()
    try:
        yield store
    finally:
        store.stop()


@pytest.fixture
def small_disk():
    """A 16 MiB tmpfs, to be filled by the test; unmounted afterwards."""
    mount_point = Path(tempfile.mkdtemp(prefix="tidegate-faults-disk-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    if done.returncode != 0:
        mount_point.rmdir()
        unavailable("mounting a tmpfs (needs root)", PermissionError(done.stderr.strip()))
    try:
        yield mount_point
    finally:
        for _ in range(20):  # a server process may still be letting go of its files
            if subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=WAIT).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=WAIT)
        mount_point.rmdir()
