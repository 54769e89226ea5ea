"""Fixtures for leak reports, webhooks and notifications: an app whose egress policy allows
loopback (explicitly, as an operator would), and an HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from tidegate.api.app import create_app
from tidegate.data import egress


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers `statuses` in turn (then 200) and keeps every request it got."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)


@pytest.fixture
def receiver():
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            state.got.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/tidegate"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def loopback_settings(settings):
    """The suite's settings with loopback allowed by the egress policy (never by default), and
    the app's own notifications worker idle: the tests run its rounds themselves, at set times."""
    yield dataclasses.replace(
        settings,
        data=dataclasses.replace(settings.data, connector_allow="127.0.0.1"),
        notify=dataclasses.replace(settings.notify, interval_seconds=3600.0),
    )
    egress.configure("")


@pytest.fixture
def client_ip():
    """A client address of this test's own: the per-address limits are process-wide."""
    n = uuid.uuid4().int
    return f"127.{n % 250 + 1}.{(n >> 8) % 250 + 1}.{(n >> 16) % 250 + 1}"


@pytest.fixture
def api(loopback_settings, client_ip):
    with TestClient(create_app(loopback_settings), client=(client_ip, 50000)) as test_client:
        yield test_client
