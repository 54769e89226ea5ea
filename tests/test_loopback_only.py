"""The suite's network guard (tests/conftest.py): a socket of the test process may connect to
loopback only; any other address is refused before a packet leaves and recorded, which fails
the test that tried."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import _refused_connections


@pytest.mark.parametrize(("family", "address"), [(socket.AF_INET, "10.0.0.1"), (socket.AF_INET6, "2001:db8::1")])
def test_a_connection_beyond_loopback_is_refused_and_recorded(family, address):
    seen = len(_refused_connections)
    with socket.socket(family) as sock, pytest.raises(PermissionError):
        sock.connect((address, 9))
    assert _refused_connections[seen:] == [address]
    del _refused_connections[seen:]  # (this test meant it: do not fail it at teardown)


def test_loopback_is_let_through():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.socket() as sock:
            sock.connect(listener.getsockname())
