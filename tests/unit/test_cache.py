"""The response cache: its key over the normalised request, and its two layers (in-process LRU,
Redis with a TTL) against the machine's real Redis (database 14)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llmq.config.providers_file import CacheConfig
from llmq.workers.cache import CachedAnswer, ResponseCache, cache_key
from tests.sync import done
from tests.unit.conftest import REDIS_URL

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
PARAMS = {"max_tokens": 64, "temperature": 0}
M = "openai/gpt-4o-mini"
ANSWER = CachedAnswer("Paris.", "stop", 12, 2, "openai/gpt-4o-mini")


# --- keys (no Redis) ---------------------------------------------------------------------------


def test_key_ignores_spelling_that_does_not_change_the_request() -> None:
    key = cache_key(M, MESSAGES, PARAMS, "t1")
    assert key.startswith("llmq:cache:v1:") and len(key) == len("llmq:cache:v1:") + 64
    same = [
        cache_key(M, MESSAGES, {"temperature": 0.0, "max_tokens": 64}, "t1"),
        cache_key(M, MESSAGES, {**PARAMS, "top_p": None}, "t1"),
        cache_key(
            "openai/gpt-4o-mini",
            [{"content": m["content"], "role": m["role"]} for m in MESSAGES],
            PARAMS,
            "t1",
        ),
        cache_key(M, [SimpleNamespace(**m) for m in MESSAGES], PARAMS, "t1"),
    ]
    assert all(k == key for k in same)


def test_key_changes_with_everything_that_shapes_the_answer() -> None:
    key = cache_key(M, MESSAGES, PARAMS, "t1")
    different = [
        cache_key("openai/gpt-4o", MESSAGES, PARAMS, "t1"),
        cache_key(M, MESSAGES[1:], PARAMS, "t1"),
        cache_key(
            "openai/gpt-4o-mini",
            [MESSAGES[0], {"role": "user", "content": "capital of france?"}],
            PARAMS,
            "t1",
        ),
        cache_key(
            "openai/gpt-4o-mini",
            [MESSAGES[0], {"role": "user", "content": "Capital of France? "}],
            PARAMS,
            "t1",
        ),
        cache_key(M, MESSAGES, {**PARAMS, "max_tokens": 65}, "t1"),
        cache_key(M, MESSAGES, {**PARAMS, "temperature": 0.2}, "t1"),
        cache_key(M, MESSAGES, {**PARAMS, "stop": ["\n"]}, "t1"),
        cache_key(M, MESSAGES, PARAMS, "t2"),
        cache_key(M, MESSAGES, PARAMS, None),
    ]
    assert len({key, *different}) == len(different) + 1


def test_answer_round_trips_through_json() -> None:
    raw = CachedAnswer("naïve — ok", None, 1, 0, "local/llama3").to_json()
    assert CachedAnswer.from_json(raw) == CachedAnswer("naïve — ok", None, 1, 0, "local/llama3")
    with pytest.raises(ValueError):
        CachedAnswer.from_json(
            '{"text": 1, "finish_reason": null, "prompt_tokens": 1, "completion_tokens": 1, "served_by": "b"}'
        )


def test_which_jobs_use_the_cache() -> None:
    off = ResponseCache(redis.Redis.from_url(REDIS_URL), CacheConfig())
    on = ResponseCache(redis.Redis.from_url(REDIS_URL), CacheConfig(temperature_zero=True))
    assert off.wanted(asked=True, temperature=0.7)
    assert not off.wanted(asked=False, temperature=0)
    assert on.wanted(asked=None, temperature=0) and on.wanted(asked=None, temperature=0.0)
    assert not on.wanted(asked=None, temperature=0.5) and not on.wanted(asked=None, temperature=None)


def test_an_explicit_cache_false_wins_over_temperature_zero_caching() -> None:
    on = ResponseCache(redis.Redis.from_url(REDIS_URL), CacheConfig(temperature_zero=True))
    assert not on.wanted(asked=False, temperature=0)
    assert not on.wanted(asked=False, temperature=0.0)


# --- the two layers ----------------------------------------------------------------------------


def test_miss_then_hit_from_this_process_and_from_another(rdb: redis.Redis) -> None:
    cache = ResponseCache(rdb, CacheConfig())
    key = cache.key("openai/gpt-4o-mini", MESSAGES, PARAMS, "t1")
    assert cache.get(key) is None
    cache.put(key, ANSWER)
    assert cache.get(key) == ANSWER
    assert 3590_000 < done(rdb.pttl(key)) <= 3600_000  # [cache] ttl_s
    # Another worker process: an empty LRU, the same Redis.
    other = ResponseCache(redis.Redis.from_url(REDIS_URL), CacheConfig())
    assert other.get(key) == ANSWER


def test_local_layer_answers_without_redis_and_is_bounded(rdb: redis.Redis) -> None:
    cache = ResponseCache(rdb, CacheConfig(lru_size=2))
    keys = [cache.key("a/b", [{"role": "user", "content": str(i)}], PARAMS, "t1") for i in range(3)]
    for key in keys:
        cache.put(key, ANSWER)
    rdb.delete(*keys)
    assert cache.get(keys[0]) is None  # evicted from the LRU (oldest), gone from Redis
    assert cache.get(keys[1]) == ANSWER and cache.get(keys[2]) == ANSWER  # from the LRU


def test_another_tenant_never_gets_the_answer(rdb: redis.Redis) -> None:
    cache = ResponseCache(rdb, CacheConfig())
    cache.put(cache.key("a/b", MESSAGES, PARAMS, "tenant-a"), ANSWER)
    assert cache.get(cache.key("a/b", MESSAGES, PARAMS, "tenant-b")) is None
    assert cache.get(cache.key("a/b", MESSAGES, PARAMS, "tenant-a")) == ANSWER


def test_a_shared_cache_serves_every_tenant(rdb: redis.Redis) -> None:
    cache = ResponseCache(rdb, CacheConfig(shared_across_tenants=True))
    cache.put(cache.key("a/b", MESSAGES, PARAMS, "tenant-a"), ANSWER)
    assert cache.get(cache.key("a/b", MESSAGES, PARAMS, "tenant-b")) == ANSWER


def test_entries_expire_in_both_layers(rdb: redis.Redis) -> None:
    cache = ResponseCache(rdb, CacheConfig())
    fresh = ResponseCache(rdb, CacheConfig())
    key = cache.key("a/b", MESSAGES, PARAMS, "t1")
    cache.put(key, ANSWER, ttl_s=0.5)
    assert fresh.get(key) == ANSWER  # fills fresh's LRU with Redis's remaining TTL
    time.sleep(0.55)
    assert rdb.get(key) is None
    assert cache.get(key) is None and fresh.get(key) is None


def test_an_unreadable_entry_is_a_miss_and_is_removed(rdb: redis.Redis) -> None:
    cache = ResponseCache(rdb, CacheConfig())
    key = cache.key("a/b", MESSAGES, PARAMS, "t1")
    rdb.set(key, b"not json", px=10_000)
    assert cache.get(key) is None
    assert rdb.exists(key) == 0


def test_redis_down_is_a_miss_not_an_error() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    cache = ResponseCache(dead, CacheConfig(lru_size=0))
    key = cache.key("a/b", MESSAGES, PARAMS, "t1")
    cache.put(key, ANSWER)
    assert cache.get(key) is None
