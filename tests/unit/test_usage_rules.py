"""The simulator's prompt-cache rule, and the rollup's key for a job's metadata."""

from __future__ import annotations

import json

from llmq.models.rollup import dims_of
from llmq.simulator.usage import PromptCache

LONG = "x" * 4200  # ceil(4200 / 4) + 3 = 1053 tokens


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_anthropic_writes_a_long_prefix_first_then_reads_it() -> None:
    cache = PromptCache(min_tokens=1024, ttl_s=300, clock=Clock())
    assert cache.use("anthropic", "m", LONG) == (0, 1053)
    assert cache.use("anthropic", "m", LONG) == (1053, 0)


def test_openai_bills_no_write_and_reads_later() -> None:
    cache = PromptCache(clock=Clock())
    assert cache.use("openai", "m", LONG) == (0, 0)
    assert cache.use("openai", "m", LONG) == (1053, 0)


def test_short_prefixes_are_never_cached() -> None:
    cache = PromptCache(min_tokens=1024, clock=Clock())
    short = "y" * 4000  # 1003 tokens
    assert cache.use("anthropic", "m", short) == (0, 0)
    assert cache.use("anthropic", "m", short) == (0, 0)
    assert cache.use("anthropic", "m", "") == (0, 0)


def test_the_cache_is_per_api_and_model_and_expires_unless_read() -> None:
    clock = Clock()
    cache = PromptCache(ttl_s=300, clock=clock)
    cache.use("anthropic", "a", LONG)
    assert cache.use("anthropic", "b", LONG) == (0, 1053)  # another model
    assert cache.use("openai", "a", LONG) == (0, 0)  # another API
    clock.now = 299
    assert cache.use("anthropic", "a", LONG) == (1053, 0)  # a read refreshes the entry
    clock.now = 598
    assert cache.use("anthropic", "a", LONG) == (1053, 0)
    clock.now = 1000
    assert cache.use("anthropic", "a", LONG) == (0, 1053)  # expired: written again
    cache.clear()
    assert cache.use("anthropic", "a", LONG) == (0, 1053)


def test_dims_keep_only_the_rolled_up_keys_in_canonical_order() -> None:
    assert (
        dims_of({"team": "red", "doc": "d1", "env": "prod"}, ["team", "env"]) == '{"env":"prod","team":"red"}'
    )
    assert dims_of({"doc": "d1"}, ["team"]) == ""
    assert dims_of(None, ["team"]) == ""
    assert dims_of({"team": "red"}, []) == ""


def test_dims_fit_the_column() -> None:
    keys = [f"k{i}" for i in range(8)]
    dims = dims_of({k: '"' * 500 for k in keys}, keys)  # quotes double when escaped
    assert len(dims) <= 1024
    assert all(len(v) == 64 for v in json.loads(dims).values())
