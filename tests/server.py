"""Running the real `tidegate` server as a subprocess, for the process-level suites.

    with running_server(tmp_path, workers=2) as srv:
        httpx.get(srv.url + "/api/v1/keys", headers=srv.headers())

`init_home()` runs `tidegate init --json` in a fresh TIDEGATE_HOME; `Server.start()` runs
`tidegate serve` in its own process group (so that stop/kill reach every uvicorn worker),
with stdout+stderr captured to a file (`Server.logs()`); every wait is bounded.

`WorkerPool` pins keep-alive HTTP connections to individual worker processes (it finds
which worker accepted a connection from /proc), so a test can *prove* that its requests
went to every worker instead of hoping the kernel spread them.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
TIDEGATE = str(BIN / "tidegate")
QUERRI = str(BIN / "querri")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
CLI_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(
    home: Path,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    access_log: bool = False,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The caller's environment minus any tidegate/Querri settings, plus this home's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDEGATE_", "QUERRI_"))}
    env["TIDEGATE_HOME"] = str(home)
    env["TIDEGATE_ACCESS_LOG"] = "1" if access_log else "0"
    env["PYTHONUNBUFFERED"] = "1"
    if database_url:
        env["TIDEGATE_DATABASE_URL"] = database_url
    if redis_url:
        env["TIDEGATE_REDIS_URL"] = redis_url
    env.update(extra or {})
    return env


def run_cli(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = CLI_TIMEOUT, executable: str = TIDEGATE
) -> subprocess.CompletedProcess:
    proc = subprocess.run([executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{Path(executable).name} {' '.join(args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


@dataclass
class Server:
    home: Path
    env: dict[str, str]
    org_id: str
    admin_user_id: str
    admin_email: str
    admin_key: str
    admin_key_id: str
    port: int = 0
    workers: int = 1
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    _log_files: list[Path] = field(default_factory=list)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, workers: int | None = None, timeout: float = START_TIMEOUT) -> Server:
        assert self.proc is None, "server already running"
        if workers is not None:
            self.workers = workers
        for attempt in range(3):
            self.port = self.port or free_port()
            self.log_path = self.home.parent / f"{self.home.name}-serve-{len(self._log_files)}.log"
            self._log_files.append(self.log_path)
            args = [TIDEGATE, "serve", "--port", str(self.port)]
            if self.workers > 1:
                args += ["--workers", str(self.workers)]
            with open(self.log_path, "wb") as log:
                # Own process group: stop()/kill() signal the supervisor and every worker.
                self.proc = subprocess.Popen(
                    args,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            try:
                self._wait_healthy(timeout)
                return self
            except _ExitedEarly:
                dead, self.proc = self.proc, None
                _reap_group(dead.pid)
                if "address already in use" in self.log_path.read_text(errors="replace").lower() and attempt < 2:
                    self.port = 0  # lost the free-port race; pick another
                    continue
                raise AssertionError(f"tidegate serve exited early:\n{self.logs()}") from None
            except BaseException:
                self.kill()
                raise
        raise AssertionError("unreachable")

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise _ExitedEarly()
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"tidegate serve not healthy after {timeout}s:\n{self.logs()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the process group and wait; SIGKILL whatever is left after `timeout`."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            code = proc.wait(timeout=10)
        _reap_group(proc.pid)
        return code

    def kill(self) -> None:
        """kill -9 the whole process group (supervisor and workers), as a crash would."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _reap_group(proc.pid)

    def restart(self, timeout: float = START_TIMEOUT) -> Server:
        self.stop()
        return self.start(timeout=timeout)

    def logs(self) -> str:
        """Everything every run of this server has written to stdout and stderr."""
        return "".join(p.read_text(errors="replace") for p in self._log_files if p.exists())

    # -- talking to it ---------------------------------------------------------------

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}", "X-Tenant-ID": self.org_id}

    def client(self, key: str | None = None, timeout: float = 30.0) -> httpx.Client:
        # Idle connections are dropped after 1 s, well before the server closes them (5 s):
        # reusing one the server is closing at that instant fails with "Server disconnected".
        return httpx.Client(
            base_url=self.url + "/api/v1",
            headers=self.headers(key),
            timeout=timeout,
            limits=httpx.Limits(keepalive_expiry=1.0),
        )

    def new_admin_key(self, rate_limit_per_minute: int = 1000) -> tuple[str, str]:
        """(id, secret) of a fresh Full Access key of the initial admin, so that a test's
        traffic does not count against the shared initial key's rate limit. Made by the
        operator CLI, as the admin: a key made through the API by the initial key could not
        have a higher rate limit than that key's own."""
        out = self.cli(
            "keys",
            "create",
            "--json",
            "--org",
            self.org_id,
            "--user",
            self.admin_email,
            "--name",
            f"admin-{os.urandom(3).hex()}",
            "--preset",
            "full_access",
            "--rate-limit-per-minute",
            str(rate_limit_per_minute),
        )
        created = json.loads(out.stdout)
        return created["id"], created["secret"]

    def sdk(self, key: str | None = None, **options):
        from querri import Querri

        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 30.0)
        return Querri(api_key=key or self.admin_key, org_id=self.org_id, host=self.url, **options)

    def cli(self, *args: str, check: bool = True, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
        """`tidegate ...` against this server's home and database."""
        return run_cli(self.env, *args, check=check, timeout=timeout)

    def querri(
        self, *args: str, key: str | None = None, check: bool = True, timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess:
        """The official `querri` CLI, configured by environment to talk to this server."""
        env = {k: v for k, v in self.env.items() if not k.startswith("TIDEGATE_")}
        env.update(
            {
                "QUERRI_API_KEY": key or self.admin_key,
                "QUERRI_ORG_ID": self.org_id,
                "QUERRI_HOST": self.url,
                "QUERRI_MAX_RETRIES": "0",
                "HOME": str(self.home / "querri-home"),  # no ~/.querri token store
                "NO_COLOR": "1",
                "TERM": "dumb",
                "COLUMNS": "200",
            }
        )
        Path(env["HOME"]).mkdir(exist_ok=True)
        return run_cli(env, *args, check=check, timeout=timeout, executable=QUERRI)

    def audit_events(self, key: str | None = None, **filters) -> list[dict]:
        """Every audit event matching `filters`, all pages, as raw JSON (request_id included)."""
        events, after = [], None
        with self.client(key) as http:
            for _ in range(1000):
                params = {"limit": 100, **filters}
                if after:
                    params["after"] = after
                resp = http.get("/audit/events", params=params)
                assert resp.status_code == 200, resp.text
                body = resp.json()
                events += body["data"]
                if not body["has_more"]:
                    return events
                after = body["next_cursor"]
        raise AssertionError("audit pagination did not end")


class _ExitedEarly(Exception):
    pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _reap_group(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no process of the group is left (SIGKILL stragglers after `timeout`)."""
    deadline = time.monotonic() + timeout
    while group_pids(pgid):
        if time.monotonic() > deadline:
            _signal_group(pgid, signal.SIGKILL)
            time.sleep(0.2)
            if group_pids(pgid):
                raise AssertionError(f"processes of group {pgid} survive SIGKILL: {group_pids(pgid)}")
            return
        time.sleep(0.05)


def live_processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live (non-zombie) process, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] not in ("Z", "X"):
            found.append((int(entry), int(fields[1]), int(fields[2])))
    return found


def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group."""
    return [pid for pid, _, group in live_processes() if group == pgid]


def init_home(
    base: Path,
    *,
    org_name: str = "Acme",
    admin_email: str = "admin@example.com",
    database_url: str | None = None,
    redis_url: str | None = None,
    access_log: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """A fresh TIDEGATE_HOME initialized with `tidegate init --json`; the server is not started."""
    home = base / f"home-{os.urandom(3).hex()}"
    home.mkdir(parents=True)
    env = base_env(home, database_url=database_url, redis_url=redis_url, access_log=access_log, extra=extra_env)
    out = run_cli(env, "init", "--json", "--org-name", org_name, "--admin-email", admin_email)
    info = json.loads(out.stdout)
    return Server(
        home=home,
        env=env,
        org_id=info["org_id"],
        admin_user_id=info["admin_user_id"],
        admin_email=info["admin_email"],
        admin_key=info["key"],
        admin_key_id=info["key_id"],
    )


@contextmanager
def running_server(base: Path, *, workers: int = 1, **init_options):
    srv = init_home(base, **init_options)
    try:
        yield srv.start(workers=workers)
    finally:
        srv.stop()


# -- pinning requests to worker processes --------------------------------------------------


def _tcp_table() -> list[tuple[int, int, str, int]]:
    """(local_port, remote_port, state, inode) of every TCP socket on the machine."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
            rows.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state, inode))
    return rows


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def connection_owner(server: Server, client_port: int) -> int | None:
    """The pid of the server process holding the accepted end of our connection."""
    inodes = [
        inode
        for local, remote, state, inode in _tcp_table()
        if local == server.port and remote == client_port and state == "01" and inode
    ]
    if not inodes:
        return None
    for pid in group_pids(server.proc.pid):
        if _socket_inodes(pid) & set(inodes):
            return pid
    return None


class PinnedConnection:
    """One keep-alive HTTP/1.1 connection and the worker process that serves it."""

    def __init__(self, server: Server):
        self.server = server
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.conn.connect()
        self.local_port = self.conn.sock.getsockname()[1]
        # A request/response round trip guarantees the worker has accept()ed the socket.
        self.conn.request("GET", "/healthz")
        resp = self.conn.getresponse()
        resp.read()
        self.pid = connection_owner(server, self.local_port)

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: dict | None = None
    ) -> tuple[int, dict[str, str], dict]:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = dict(headers or {})
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=hdrs)
        resp = self.conn.getresponse()
        raw = resp.read()
        headers_out = {k.lower(): v for k, v in resp.getheaders()}
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"raw": raw.decode(errors="replace")}
        return resp.status, headers_out, payload

    def still_pinned(self) -> bool:
        return self.conn.sock is not None and connection_owner(self.server, self.local_port) == self.pid

    def close(self) -> None:
        self.conn.close()


class WorkerPool:
    """One pinned connection per worker process of a multi-worker server.

    `request(i, ...)` sends on worker i's connection. The server drops idle keep-alive
    connections after a few seconds; then a new connection is opened until one lands on
    the same worker again, so "worker i" stays the same process for the pool's life.
    """

    def __init__(self, server: Server, workers: int, timeout: float = 60.0):
        self.server = server
        self.connections: dict[int, PinnedConnection] = {}
        deadline = time.monotonic() + timeout
        spare = []
        while len(self.connections) < workers:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not reach {workers} distinct workers; saw {list(self.connections)}")
            conn = PinnedConnection(server)
            if conn.pid is not None and conn.pid not in self.connections:
                self.connections[conn.pid] = conn
            else:
                spare.append(conn)  # keep it open so the next connect can land elsewhere
            if len(spare) > 50:
                for c in spare:
                    c.close()
                spare = []
                time.sleep(0.2)
        for c in spare:
            c.close()
        self.pids = sorted(self.connections)

    def _connection(self, index: int) -> PinnedConnection:
        pid = self.pids[index]
        conn = self.connections[pid]
        if conn.still_pinned():
            return conn
        conn.close()
        deadline = time.monotonic() + 30
        spare = []
        try:
            while time.monotonic() < deadline:
                candidate = PinnedConnection(self.server)
                if candidate.pid == pid:
                    self.connections[pid] = candidate
                    return candidate
                spare.append(candidate)
            raise AssertionError(f"could not reconnect to worker {pid}")
        finally:
            for c in spare:
                c.close()

    def request(
        self, index: int, method: str, path: str, headers: dict[str, str] | None = None, body: dict | None = None
    ) -> tuple[int, dict[str, str], dict]:
        for attempt in range(3):
            conn = self._connection(index)
            try:
                status, hdrs, payload = conn.request(method, path, headers, body)
            except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest):
                # The worker closed the idle connection just as we sent; nothing was processed.
                conn.close()
                if attempt == 2:
                    raise
                continue
            # Who actually answered: the connection's worker (checked, not assumed).
            assert conn.pid == self.pids[index]
            return status, hdrs, payload
        raise AssertionError("unreachable")

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()


# -- external services ---------------------------------------------------------------------

PG_URL = os.environ.get("TIDEGATE_TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TIDEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI") == "true"


def unavailable(what: str, exc: Exception):
    """Skip, loudly, when a service is missing -- but fail under CI=true, which must run it."""
    import pytest

    message = f"{what} unavailable ({exc.__class__.__name__}: {exc}); this test is SKIPPED"
    if IN_CI:
        pytest.fail(f"{message} -- but CI=true requires it", pytrace=False)
    print(f"\n*** {message} ***")
    pytest.skip(message)


@contextmanager
def scratch_postgres_database(prefix: str):
    """The URL of a new, empty PostgreSQL database, dropped afterwards (skips or, under CI,
    fails when PostgreSQL is unavailable)."""
    import uuid

    import psycopg

    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001
        unavailable("PostgreSQL", exc)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
