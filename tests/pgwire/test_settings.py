"""The endpoint's settings: off unless a port is set, every TIDEGATE_PG_* variable read."""

from __future__ import annotations

import pytest

from tidegate.config import load_settings
from tidegate.pgwire import tls


def test_the_endpoint_is_off_by_default(tmp_path):
    pg = load_settings({"TIDEGATE_HOME": str(tmp_path / "home")}).pg
    assert not pg.enabled and pg.port == 0 and not pg.allow_plain_loopback
    assert (pg.tls_cert, pg.tls_key, pg.max_connections_per_key, pg.auth_attempts_per_minute) == (None, None, 10, 30)


def test_values_set_are_the_values_used(tmp_path):
    pg = load_settings(
        {
            "TIDEGATE_HOME": str(tmp_path / "home"),
            "TIDEGATE_PG_PORT": "5439",
            "TIDEGATE_PG_TLS_CERT": str(tmp_path / "c.pem"),
            "TIDEGATE_PG_TLS_KEY": str(tmp_path / "k.pem"),
            "TIDEGATE_PG_ALLOW_PLAIN_LOOPBACK": "1",
            "TIDEGATE_PG_MAX_CONNECTIONS_PER_KEY": "2",
            "TIDEGATE_PG_AUTH_ATTEMPTS_PER_MINUTE": "5",
            "TIDEGATE_PG_MAX_RESULT_BYTES": "1000000",
        }
    ).pg
    assert pg.enabled and pg.port == 5439 and pg.allow_plain_loopback
    assert (pg.tls_cert, pg.tls_key) == (tmp_path / "c.pem", tmp_path / "k.pem")
    assert (pg.max_connections_per_key, pg.auth_attempts_per_minute, pg.max_result_bytes) == (2, 5, 1_000_000)


@pytest.mark.parametrize(
    "variables",
    [
        {"TIDEGATE_PG_PORT": "five"},
        {"TIDEGATE_PG_TLS_CERT": "/x/cert.pem"},  # without its key
        {"TIDEGATE_PG_ALLOW_PLAIN_LOOPBACK": "yes"},
        {"TIDEGATE_PG_MAX_CONNECTIONS_PER_KEY": "0"},
        {"TIDEGATE_PG_MAX_RESULT_BYTES": "-1"},
    ],
)
def test_a_value_that_cannot_be_read_stops_start_up(tmp_path, variables):
    with pytest.raises(SystemExit, match="TIDEGATE_PG_"):
        load_settings({"TIDEGATE_HOME": str(tmp_path / "home"), **variables})


def test_the_generated_certificate_is_made_once_private_and_fingerprinted(tmp_path):
    cert, key = tls.generate(tmp_path)
    assert (cert.stat().st_mode & 0o777, key.stat().st_mode & 0o777) == (0o600, 0o600)
    first = tls.fingerprint(cert)
    assert tls.generate(tmp_path) == (cert, key) and tls.fingerprint(cert) == first  # kept across starts
    assert len(first.split(":")) == 32
