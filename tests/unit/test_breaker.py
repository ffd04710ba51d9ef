"""Circuit breakers shared through Redis: opening on consecutive failures and on a failure ratio,
refusing while open, one probe among many concurrent callers, closing and re-opening — against
the machine's real Redis (database 14) with real threads."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from llmq.config.providers_file import BreakerConfig, BreakerOverrides, ModelConfig, ProvidersConfig
from llmq.workers.breaker import BreakerDecision, CircuitBreakers
from tests.unit.conftest import REDIS_URL

MODEL = "sim/primary"


def breakers(client: redis.Redis, **kwargs: float) -> CircuitBreakers:
    defaults: dict[str, float] = {"failures": 3, "cooldown_s": 0.3, "min_calls": 1000, "window_s": 10}
    defaults.update(kwargs)
    return CircuitBreakers(client, ProvidersConfig(breaker=BreakerConfig.model_validate(defaults)))


def trip(cb: CircuitBreakers, n: int) -> None:
    for _ in range(n):
        cb.record(MODEL, success=False)


def test_opens_after_consecutive_failures_and_refuses_while_open(rdb: redis.Redis) -> None:
    cb = breakers(rdb, cooldown_s=5)
    trip(cb, 2)
    assert cb.check(MODEL) == BreakerDecision(allowed=True, state="closed", retry_in_s=0.0, probe=False)
    assert cb.record(MODEL, success=False) == "open"
    decision = cb.check(MODEL)
    assert not decision.allowed and decision.state == "open" and not decision.probe
    assert 4.0 < decision.retry_in_s <= 5.0
    snap = cb.snapshot(MODEL)
    assert snap["state"] == "open" and snap["consecutive_failures"] == 3
    assert snap["failures"] == 3 and snap["calls"] == 3 and snap["error_rate"] == 1.0
    assert snap["opened_at"] == pytest.approx(time.time(), abs=5)
    assert 4.0 < snap["retry_in_s"] <= 5.0
    for _ in range(20):
        assert not cb.check(MODEL).allowed


def test_a_success_resets_the_consecutive_count(rdb: redis.Redis) -> None:
    cb = breakers(rdb)
    trip(cb, 2)
    cb.record(MODEL, success=True)
    trip(cb, 2)
    assert cb.check(MODEL).allowed
    assert cb.snapshot(MODEL)["consecutive_failures"] == 2


def test_results_arriving_while_open_do_not_move_it(rdb: redis.Redis) -> None:
    cb = breakers(rdb, cooldown_s=5)
    trip(cb, 3)
    opened_at = cb.snapshot(MODEL)["opened_at"]
    time.sleep(0.05)
    assert cb.record(MODEL, success=False) == "open"  # a late failure: no new cooldown
    assert cb.record(MODEL, success=True) == "open"  # a late success: not a probe, stays open
    assert cb.snapshot(MODEL)["opened_at"] == opened_at


def test_exactly_one_of_ten_concurrent_callers_probes_after_the_cooldown(rdb: redis.Redis) -> None:
    cb = breakers(rdb, cooldown_s=0.3)
    trip(cb, 3)
    time.sleep(0.35)
    barrier = threading.Barrier(10)
    decisions: list[BreakerDecision] = []
    lock = threading.Lock()

    def caller() -> None:
        barrier.wait()
        decision = cb.check(MODEL)
        with lock:
            decisions.append(decision)

    threads = [threading.Thread(target=caller) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    probes = [d for d in decisions if d.allowed]
    assert len(probes) == 1 and probes[0].probe and probes[0].state == "half_open"
    refused = [d for d in decisions if not d.allowed]
    assert len(refused) == 9
    assert all(d.state == "half_open" and not d.probe and 0 < d.retry_in_s <= 0.3 for d in refused)
    assert cb.snapshot(MODEL)["state"] == "half_open"


def test_probe_success_closes_and_resets_counts(rdb: redis.Redis) -> None:
    cb = breakers(rdb, cooldown_s=0.2)
    trip(cb, 3)
    time.sleep(0.25)
    probe = cb.check(MODEL)
    assert probe.probe
    assert cb.record(MODEL, success=True, probe=True) == "closed"
    snap = cb.snapshot(MODEL)
    assert snap == {
        "state": "closed",
        "consecutive_failures": 0,
        "calls": 0,
        "failures": 0,
        "error_rate": 0.0,
        "opened_at": None,
        "retry_in_s": 0.0,
    }
    decisions = [cb.check(MODEL) for _ in range(5)]
    assert all(d.allowed and not d.probe and d.state == "closed" for d in decisions)
    trip(cb, 2)  # counting starts afresh: two failures do not re-open it
    assert cb.check(MODEL).allowed


def test_probe_failure_reopens_for_another_cooldown(rdb: redis.Redis) -> None:
    cb = breakers(rdb, cooldown_s=0.3)
    trip(cb, 3)
    first_opened = cb.snapshot(MODEL)["opened_at"]
    time.sleep(0.35)
    assert cb.check(MODEL).probe
    assert cb.record(MODEL, success=False, probe=True) == "open"
    decision = cb.check(MODEL)
    assert not decision.allowed and decision.state == "open" and 0 < decision.retry_in_s <= 0.3
    snap = cb.snapshot(MODEL)
    assert snap["opened_at"] > first_opened and snap["consecutive_failures"] == 4
    time.sleep(0.35)
    assert cb.check(MODEL).probe  # the next cooldown ends with one probe again


def test_a_lost_probe_frees_the_way_after_its_lease(rdb: redis.Redis) -> None:
    cb = breakers(rdb, cooldown_s=0.1, probe_timeout_s=0.5)
    trip(cb, 3)
    time.sleep(0.15)
    assert cb.check(MODEL).probe  # this probe's worker dies and never reports
    assert not cb.check(MODEL).allowed
    time.sleep(0.55)
    assert cb.check(MODEL).probe


def test_an_abandoned_probe_lets_the_next_caller_probe_at_once(rdb: redis.Redis) -> None:
    cb = breakers(rdb, cooldown_s=0.1)
    trip(cb, 3)
    time.sleep(0.15)
    assert cb.check(MODEL).probe
    cb.abandon_probe(MODEL)
    assert cb.check(MODEL).probe


def test_failure_ratio_opens_once_min_calls_are_reached(rdb: redis.Redis) -> None:
    cb = breakers(rdb, failures=100, failure_ratio=0.5, min_calls=10)
    for i in range(9):
        assert cb.record(MODEL, success=i % 2 == 0) == "closed"  # 4 of 9 failed, under min_calls
    snap = cb.snapshot(MODEL)
    assert (
        snap["calls"] == 9 and snap["failures"] == 4 and snap["error_rate"] == pytest.approx(0.4444, abs=1e-4)
    )
    assert cb.record(MODEL, success=False) == "open"  # 5 of 10


def test_failure_ratio_below_the_threshold_stays_closed(rdb: redis.Redis) -> None:
    cb = breakers(rdb, failures=100, failure_ratio=0.5, min_calls=10)
    for i in range(30):
        assert cb.record(MODEL, success=i % 5 not in (3, 4)) == "closed"  # 40 % failures
    assert cb.check(MODEL).allowed


def test_failures_older_than_the_window_do_not_count(rdb: redis.Redis) -> None:
    cb = breakers(rdb, failures=100, failure_ratio=0.5, min_calls=4, window_s=0.3)
    trip(cb, 3)
    time.sleep(0.35)
    assert cb.record(MODEL, success=False) == "closed"  # 1 call in the window
    assert cb.snapshot(MODEL)["calls"] == 1


def test_per_model_overrides_apply_to_that_model_only(rdb: redis.Redis) -> None:
    config = ProvidersConfig(
        breaker=BreakerConfig(failures=5, cooldown_s=30),
        models={"sim/fragile": ModelConfig(breaker=BreakerOverrides(failures=1, cooldown_s=2))},
    )
    cb = CircuitBreakers(rdb, config)
    assert cb.settings("sim/fragile") == BreakerConfig(failures=1, cooldown_s=2)
    assert cb.record("sim/fragile", success=False) == "open"
    assert 1.0 < cb.check("sim/fragile").retry_in_s <= 2.0
    assert cb.record("sim/sturdy", success=False) == "closed"
    assert cb.check("sim/sturdy").allowed


def test_breakers_are_shared_by_every_client(rdb: redis.Redis) -> None:
    # Two "workers", each with its own connection and CircuitBreakers object.
    other = redis.Redis.from_url(REDIS_URL)
    a, b = breakers(rdb, cooldown_s=5), breakers(other, cooldown_s=5)
    a.record(MODEL, success=False)
    b.record(MODEL, success=False)
    a.record(MODEL, success=False)
    assert not b.check(MODEL).allowed
    b.reset(MODEL)
    assert a.check(MODEL).allowed
    other.close()
