"""A real S3-compatible server for the tests that need one (tests/objectstore, tests/scale):
moto's standalone server (installed apart by `make clients` into build/s3server), started on
127.0.0.1, and a small TCP proxy the tests can cut (the store "down") and restore without
losing the server's in-memory buckets, and that can act the moment a given request passes
(to kill a node right after its upload, before its commit, or in the middle of a GC round).

One server per test package or module (`start_moto`), never one per test: it takes a
second or two to start."""

from __future__ import annotations

import os
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from server import free_port, unavailable

S3SERVER = Path(__file__).resolve().parents[1] / "build" / "s3server"
WAIT = 30.0
ACCESS_KEY, SECRET_KEY = "tidegate-test-key", "tidegate-test-secret-do-not-log-7f3a"


class MotoS3:
    def __init__(self, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(S3SERVER)}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + WAIT
        while True:
            try:
                httpx.get(self.url + "/", timeout=1)
                return
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"moto server did not start:\n{log.read_text(errors='replace')[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def new_bucket(self) -> str:
        name = f"tg-{uuid.uuid4().hex[:12]}"
        httpx.put(f"{self.url}/{name}", timeout=10).raise_for_status()
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Object name -> size (directory markers, ending in '/', left out)."""
        response = httpx.get(f"{self.url}/{bucket}", params={"list-type": "2", "prefix": prefix}, timeout=10)
        response.raise_for_status()
        ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
        found = {}
        for item in ET.fromstring(response.content).findall("s3:Contents", ns):
            key = item.findtext("s3:Key", namespaces=ns) or ""
            if not key.endswith("/"):
                found[key] = int(item.findtext("s3:Size", namespaces=ns) or 0)
        return found

    def delete(self, bucket: str, key: str) -> None:
        httpx.delete(f"{self.url}/{bucket}/{key}", timeout=10).raise_for_status()

    def put(self, bucket: str, key: str, data: bytes) -> None:
        httpx.put(f"{self.url}/{bucket}/{key}", content=data, timeout=10).raise_for_status()

    def deletes_of(self, bucket: str, key: str) -> int:
        """How many DELETE requests for `key` the server answered with success (its access log)."""
        line = re.compile(
            rb'"(?:\x1b\[[0-9;]*m)*DELETE /'
            + re.escape(f"{bucket}/{key}".encode())
            + rb' HTTP/1\.1(?:\x1b\[0m)?" 2\d\d '
        )
        return len(line.findall(self.log.read_bytes()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)


class StoreProxy:
    """127.0.0.1:<port> -> the store. `down()` refuses new connections and cuts open ones;
    `up()` listens again on the same port. `when(pattern, action)` runs `action` once, the
    first time a client sends bytes matching `pattern`, before forwarding them."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._trigger: tuple[re.Pattern[bytes], Callable[[], None], bool] | None = None
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it: close alone does not
            except OSError:
                pass
            listener.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def when(self, pattern: bytes, action: Callable[[], None], *, drop: bool = False) -> None:
        """Once: run `action` when a client sends bytes matching `pattern`, then forward them,
        or, with `drop`, cut the connection instead (the request never reaches the store)."""
        self._trigger = (re.compile(pattern), action, drop)

    def disarm(self) -> None:
        self._trigger = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in selector.select(timeout=1):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    trigger = self._trigger
                    if source is client and trigger is not None and trigger[0].search(data):
                        self._trigger = None
                        trigger[1]()
                        if trigger[2]:
                            return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            with self._lock:
                self._open.discard(client)
                self._open.discard(upstream)
            client.close()
            upstream.close()


@contextmanager
def running_moto(directory: Path) -> Iterator[MotoS3]:
    """A moto server logging into `directory` (skips, or fails under CI, when not installed)."""
    if not (S3SERVER / "moto").is_dir():
        unavailable("moto S3 server (make clients installs it into build/s3server)", FileNotFoundError(S3SERVER))
    server = MotoS3(directory / "moto.log")
    try:
        yield server
    finally:
        server.stop()


def s3_env(endpoint: str, bucket: str, prefix: str = "data", **extra: str) -> dict[str, str]:
    return {
        "TIDEGATE_DATA_URL": f"s3://{bucket}/{prefix}",
        "TIDEGATE_S3_ENDPOINT_URL": endpoint,
        "TIDEGATE_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "TIDEGATE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        **extra,
    }
