"""Shared fixtures of the unit tests that run against the machine's real Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

# A database of its own (14 unless told), emptied before and after each test that uses it.
REDIS_URL = os.environ.get("LLMQ_TEST_UNIT_REDIS_URL", "redis://127.0.0.1:6379/14")


@pytest.fixture
def rdb() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
