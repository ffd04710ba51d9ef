"""Fleet-wide rate limits: the exact sliding window of rpm and tpm, and the leased semaphore,
against the machine's real Redis (database 14), hammered by real threads and processes."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from llmq.workers.pricing import LimitsConfig, ModelConfig, ProvidersConfig
from llmq.workers.ratelimit import RateLimiter, estimate_input_tokens, estimate_tokens

REDIS_URL = os.environ.get("LLMQ_TEST_UNIT_REDIS_URL", "redis://127.0.0.1:6379/14")


@pytest.fixture
def rdb() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def limiter(client: redis.Redis, window_s: float, **models: ModelConfig) -> RateLimiter:
    config = ProvidersConfig(models={f"sim/{name}": cfg for name, cfg in models.items()})
    return RateLimiter(client, config, window_s=window_s)


def max_in_any_window(times: list[float], window_s: float, weights: list[int] | None = None) -> int:
    """The most (weighted) admissions whose times lie in one window (t - window_s, t]."""
    order = sorted(range(len(times)), key=lambda i: times[i])
    ts = [times[i] for i in order]
    ws = [weights[i] if weights else 1 for i in order]
    best = total = 0
    start = 0
    for end in range(len(ts)):
        total += ws[end]
        while ts[end] - ts[start] >= window_s:
            total -= ws[start]
            start += 1
        best = max(best, total)
    return best


# --- estimates (no Redis) ------------------------------------------------------------------------


def test_token_estimate_is_bytes_over_four_plus_overhead() -> None:
    messages = [{"role": "system", "content": "x" * 40}, {"role": "user", "content": "y" * 41}]
    assert estimate_input_tokens(messages) == 3 + (4 + 10) + (4 + 11)
    assert estimate_tokens(messages, 100) == estimate_input_tokens(messages) + 100
    assert estimate_tokens(messages, None, default_max_tokens=256) == estimate_input_tokens(messages) + 256


def test_token_estimate_reads_content_parts_and_wide_scripts() -> None:
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "abcd" * 5}, {"type": "text", "text": "efgh"}]}
    ]
    assert estimate_input_tokens(parts) == 3 + 4 + 6
    # Three UTF-8 bytes a character: 12 characters of CJK count as 9 tokens, not 3.
    assert estimate_input_tokens([{"role": "user", "content": "漢" * 12}]) == 3 + 4 + 9


# --- rpm and tpm -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_unlimited_model_is_always_admitted_without_redis(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(rpm=1))
    for _ in range(5):
        admission = rl.acquire("sim/unlisted", 100)
        assert admission.allowed and admission.reservation is None
    assert rdb.keys("*") == []


def server_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1_000_000


@pytest.mark.integration
def test_refusal_says_exactly_when_the_oldest_entry_leaves(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(rpm=3))
    before = server_time(rdb)
    first = rl.acquire("sim/a", 1)
    assert first.allowed and first.admitted_at is not None
    assert before <= first.admitted_at <= server_time(rdb)  # the Redis clock, not ours
    assert rl.acquire("sim/a", 1).allowed and rl.acquire("sim/a", 1).allowed
    before = server_time(rdb)
    refused = rl.acquire("sim/a", 1)
    after = server_time(rdb)
    assert not refused.allowed and refused.reservation is None
    # Exactly when the first entry leaves the window, as seen by the Redis clock.
    assert first.admitted_at + 1.0 - after <= refused.retry_in_s <= first.admitted_at + 1.0 - before
    time.sleep(refused.retry_in_s)
    again = rl.acquire("sim/a", 1)
    assert again.allowed
    assert again.admitted_at is not None and again.admitted_at - first.admitted_at >= 1.0


@pytest.mark.integration
def test_tokens_and_requests_are_checked_together(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(rpm=10, tpm=100))
    assert rl.acquire("sim/a", 60).allowed
    assert rl.acquire("sim/a", 30).allowed
    refused = rl.acquire("sim/a", 20)  # 110 > 100: refused although rpm has room
    assert not refused.allowed and 0 < refused.retry_in_s <= 1.0
    assert rl.acquire("sim/a", 10).allowed  # fits exactly
    usage = rl.usage("sim/a")
    assert usage["rpm_used"] == 3 and usage["tpm_used"] == 100
    assert usage["rpm_limit"] == 10 and usage["tpm_limit"] == 100 and usage["window_s"] == 1.0


@pytest.mark.integration
def test_tpm_wait_is_until_enough_tokens_leave(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(tpm=100))
    first = rl.acquire("sim/a", 10)
    time.sleep(0.3)
    second = rl.acquire("sim/a", 80)
    assert first.admitted_at is not None and second.admitted_at is not None
    # 90 used; 50 more need the 80-token entry gone, not just the 10-token one.
    before = server_time(rdb)
    refused = rl.acquire("sim/a", 50)
    after = server_time(rdb)
    assert not refused.allowed
    assert second.admitted_at + 1.0 - after <= refused.retry_in_s <= second.admitted_at + 1.0 - before


@pytest.mark.integration
def test_settle_replaces_the_reservation_with_the_reported_usage(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(tpm=1000))
    reserved = estimate_tokens([{"role": "user", "content": "hello"}], 900)
    admission = rl.acquire("sim/a", reserved)
    assert admission.allowed
    assert not rl.acquire("sim/a", 200).allowed
    assert rl.settle(admission.reservation, 120) == 120 - reserved
    assert rl.usage("sim/a")["tpm_used"] == 120
    assert rl.acquire("sim/a", 200).allowed  # the freed output reservation is usable at once
    assert rl.settle(None, 50) == 0


@pytest.mark.integration
def test_settle_after_the_window_changes_nothing(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 0.2, a=ModelConfig(tpm=100))
    admission = rl.acquire("sim/a", 50)
    time.sleep(0.25)
    assert rl.settle(admission.reservation, 500) == 0
    assert rl.usage("sim/a")["tpm_used"] == 0


@pytest.mark.integration
def test_cancel_gives_back_a_call_never_sent(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(rpm=1, tpm=100))
    admission = rl.acquire("sim/a", 80)
    assert not rl.acquire("sim/a", 10).allowed
    assert rl.cancel(admission.reservation)
    assert not rl.cancel(admission.reservation)
    assert rl.acquire("sim/a", 10).allowed


@pytest.mark.integration
def test_a_call_larger_than_tpm_runs_alone(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 0.8, a=ModelConfig(tpm=100))
    small = rl.acquire("sim/a", 1)
    assert small.allowed
    assert not rl.acquire("sim/a", 500).allowed  # waits for an empty window
    time.sleep(0.85)
    big = rl.acquire("sim/a", 500)
    assert big.allowed
    assert rl.usage("sim/a")["tpm_used"] == 100  # cut to the whole budget
    assert not rl.acquire("sim/a", 1).allowed


@pytest.mark.integration
def test_keys_expire_with_the_window(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 0.5, a=ModelConfig(rpm=5, tpm=50, concurrency=2))
    rl.acquire("sim/a", 5)
    rl.acquire_slot("sim/a", "h", lease_s=0.5)
    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in rdb.keys("*"))
    assert keys == ["llmq:rl:sim/a:log", "llmq:rl:sim/a:slots", "llmq:rl:sim/a:sum", "llmq:rl:sim/a:tok"]
    for key in keys:
        assert 0 < rdb.pttl(key) <= 1500


@pytest.mark.integration
def test_eight_threads_never_exceed_rpm_or_tpm_in_any_window(rdb: redis.Redis) -> None:
    window, rpm, tpm = 2.0, 60, 900
    rl = limiter(rdb, window, a=ModelConfig(rpm=rpm, tpm=tpm))
    admitted: list[tuple[float, int]] = []
    lock = threading.Lock()
    stop = time.monotonic() + 6.0

    def hammer(seed: int) -> None:
        n = seed
        while time.monotonic() < stop:
            n = (n * 1103515245 + 12345) % 2**31
            tokens = 1 + n % 30  # 15.5 on average: 60 requests would want ~930 > 900
            admission = rl.acquire("sim/a", tokens)
            if admission.allowed:
                assert admission.admitted_at is not None
                with lock:
                    admitted.append((admission.admitted_at, tokens))
            else:
                time.sleep(min(admission.retry_in_s, 0.01))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times = [t for t, _ in admitted]
    assert max_in_any_window(times, window) <= rpm
    assert max_in_any_window(times, window, [n for _, n in admitted]) <= tpm
    # Saturated, not merely refusing: three windows' worth of requests got through.
    assert len(admitted) >= 150


def _hammer_process(
    url: str, window: float, rpm: int, seconds: float, go: Any, out: multiprocessing.Queue
) -> None:
    client = redis.Redis.from_url(url)
    rl = limiter(client, window, a=ModelConfig(rpm=rpm))
    go.wait(30)
    stop = time.monotonic() + seconds
    times: list[float] = []
    while time.monotonic() < stop:
        admission = rl.acquire("sim/a", 1)
        if admission.allowed and admission.admitted_at is not None:
            times.append(admission.admitted_at)
        else:
            time.sleep(min(admission.retry_in_s, 0.005))
    out.put(times)


@pytest.mark.integration
def test_four_processes_share_one_limit(rdb: redis.Redis) -> None:
    window, rpm = 1.0, 20
    # forkserver: children forked from a clean, single-threaded server that imported this module
    # once, so they start fast and all compete at once (after `go`).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    go = ctx.Event()
    out: multiprocessing.Queue = ctx.Queue()
    procs = [
        ctx.Process(target=_hammer_process, args=(REDIS_URL, window, rpm, 2.0, go, out)) for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    go.set()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
    times = [t for result in results for t in result]
    assert max_in_any_window(times, window) <= rpm
    assert sum(1 for result in results if result) >= 2  # the processes really competed
    assert len(times) >= 2 * rpm


# --- concurrency slots -------------------------------------------------------------------------


@pytest.mark.integration
def test_semaphore_never_exceeds_its_cap_under_twenty_threads(rdb: redis.Redis) -> None:
    cap = 5
    rl = limiter(rdb, 1.0, a=ModelConfig(concurrency=cap))
    holding = 0
    most = 0
    seen_in_redis = 0
    lock = threading.Lock()
    stop = time.monotonic() + 2.0

    def worker() -> None:
        nonlocal holding, most
        while time.monotonic() < stop:
            holder = uuid.uuid4().hex
            if not rl.acquire_slot("sim/a", holder, lease_s=5):
                time.sleep(0.002)
                continue
            with lock:
                holding += 1
                most = max(most, holding)
            time.sleep(0.005)
            with lock:
                holding -= 1
            assert rl.release_slot("sim/a", holder)

    def watch() -> None:
        nonlocal seen_in_redis
        while time.monotonic() < stop:
            seen_in_redis = max(seen_in_redis, rl.usage("sim/a")["in_flight"])

    threads = [threading.Thread(target=worker) for _ in range(20)] + [threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == cap  # reached, never passed
    assert seen_in_redis <= cap
    assert rl.usage("sim/a")["in_flight"] == 0


@pytest.mark.integration
def test_a_holder_that_stops_renewing_loses_its_slot(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(concurrency=1))
    assert rl.acquire_slot("sim/a", "dead-worker", lease_s=0.3)
    assert not rl.acquire_slot("sim/a", "other", lease_s=0.3)
    time.sleep(0.35)
    assert rl.acquire_slot("sim/a", "other", lease_s=0.3)
    # The dead worker's renewal does not take the slot back: it is told it lost it.
    assert rl.renew_slot("sim/a", ["dead-worker"], lease_s=0.3) == ["dead-worker"]
    assert not rl.release_slot("sim/a", "dead-worker")
    assert rl.usage("sim/a")["in_flight"] == 1


@pytest.mark.integration
def test_renewing_keeps_a_slot_past_its_first_lease(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(concurrency=1))
    assert rl.acquire_slot("sim/a", "alive", lease_s=0.3)
    for _ in range(8):  # 0.8 s in all, well past the first lease
        time.sleep(0.1)
        assert rl.renew_slot("sim/a", ["alive"], lease_s=0.3) == []
        assert not rl.acquire_slot("sim/a", "other", lease_s=0.3)
    assert rl.acquire_slot("sim/a", "alive", lease_s=0.3)  # re-entrant for its holder
    assert rl.release_slot("sim/a", "alive")
    assert rl.acquire_slot("sim/a", "other", lease_s=0.3)


@pytest.mark.integration
def test_model_without_a_cap_has_no_slots(rdb: redis.Redis) -> None:
    rl = limiter(rdb, 1.0, a=ModelConfig(rpm=5))
    assert all(rl.acquire_slot("sim/a", f"h{i}") for i in range(100))
    assert rl.renew_slot("sim/a", ["h1"]) == []
    assert rdb.keys("*") == []


def test_limiter_takes_its_window_and_lease_from_the_file() -> None:
    config = ProvidersConfig(limits=LimitsConfig(window_s=30, lease_s=12))
    rl = RateLimiter(redis.Redis.from_url(REDIS_URL), config)
    assert rl.window_s == 30.0 and rl.lease_s == 12.0
