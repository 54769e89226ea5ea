"""The main browser flow again, with the server on PostgreSQL (sessions, keys and audit there);
and the pictures and the key list, whose per-day and sorting SQL differ by backend."""

from __future__ import annotations

import uuid

import pytest

from .conftest import web_server
from .test_every_page import (  # noqa: F401  (collected here too)
    test_charts_carry_the_totals_the_api_reports,
    test_keys_list_sorts_filters_and_pages_both_ways,
    world,
)
from .test_keys_flow import test_create_use_revoke_and_audit  # noqa: F401  (collected here too)


@pytest.fixture(scope="module")
def web(tmp_path_factory, postgresql_url):
    with web_server(
        tmp_path_factory.mktemp("web-pg"), database_url=postgresql_url, org_name=f"Acme-{uuid.uuid4().hex[:8]}"
    ) as server:
        yield server
