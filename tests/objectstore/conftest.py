"""The object-storage tests' S3 server (tests/s3.py): one moto server per package run, and
per module a proxy in front of it that the tests can cut."""

from __future__ import annotations

import pytest
from s3 import StoreProxy, running_moto


@pytest.fixture(scope="package")
def moto(tmp_path_factory):
    with running_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def store_proxy(moto):
    proxy = StoreProxy(moto.port)
    yield proxy
    proxy.down()
