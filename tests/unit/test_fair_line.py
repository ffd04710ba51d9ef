"""Fair shares in a model's line, against the bundled Redis: tenants take turns weighted by their
tier, a tenant's interactive jobs overtake its bulk ones without giving it more turns, each flow
stays first come first served, and a place is kept across refusals and lost when it lapses."""

from __future__ import annotations

import random
import time
from typing import Any

import redis

from llmq.config.providers_file import ModelConfig, ProvidersConfig
from llmq.models.records import ClaimedJob
from llmq.models.tenants import TenantPolicy
from llmq.tasks.gate import Go, Park, gate
from llmq.workers.ratelimit import RPM_WAIT_WINDOWS_MAX, RateLimiter
from tests.unit.gate_runtime import gate_runtime

MODEL = "sim/fair"


def _limiter(client: redis.Redis, **model: Any) -> RateLimiter:
    return RateLimiter(client, ProvidersConfig(models={MODEL: ModelConfig(**model)}), window_s=30.0)


def _join(
    rl: RateLimiter, jobs: list[str], tenant: str, weight: int = 1, priority: str = "interactive"
) -> None:
    for job in jobs:
        admission = rl.acquire(
            MODEL, 0, holder=f"h-{job}", job_id=job, tenant=tenant, weight=weight, priority=priority
        )
        assert not admission.allowed


def _serve_one_at_a_time(rl: RateLimiter, waiting: list[str], seed: int = 7) -> list[str]:
    """With a cap of one slot: free it, let every waiting job ask in a random order (as workers
    waking at random would), and note which one got it. The order the jobs were served in."""
    rng = random.Random(seed)
    served: list[str] = []
    pending = list(waiting)
    holder = "running"
    while pending:
        assert rl.release_slot(MODEL, holder)
        rng.shuffle(pending)
        admitted = [job for job in pending if rl.acquire(MODEL, 0, holder=f"h-{job}", job_id=job).allowed]
        assert len(admitted) == 1, admitted  # one free slot: exactly one job, the one whose turn it is
        served.append(admitted[0])
        pending.remove(admitted[0])
        holder = f"h-{admitted[0]}"
    return served


def _running(rl: RateLimiter) -> None:
    assert rl.acquire(MODEL, 0, holder="running").allowed  # the only slot is taken


def test_tenants_of_weight_one_and_four_take_turns_one_to_four(rdb: redis.Redis) -> None:
    rl = _limiter(rdb, concurrency=1)
    _running(rl)
    a = [f"a{i:02}" for i in range(30)]
    b = [f"b{i:02}" for i in range(30)]
    _join(rl, a, "ten_a", weight=1)  # A was there first, with a long backlog
    _join(rl, b, "ten_b", weight=4)
    served = _serve_one_at_a_time(rl, a + b)
    first = served[:25]
    assert sum(job.startswith("b") for job in first) == 20 and sum(job.startswith("a") for job in first) == 5
    # Every five turns in the shared part of the line: one for A, four for B.
    for start in range(0, 35, 5):
        chunk = served[start : start + 5]
        assert sorted(j[0] for j in chunk) == ["a", "b", "b", "b", "b"], chunk
    # Each tenant's jobs in the order they joined.
    assert [j for j in served if j.startswith("a")] == a
    assert [j for j in served if j.startswith("b")] == b


def test_equal_weights_alternate_and_a_late_tenant_is_not_behind_the_backlog(rdb: redis.Redis) -> None:
    rl = _limiter(rdb, rpm=1)
    assert rl.acquire(MODEL, 0).allowed  # the window is full
    a = [f"a{i:03}" for i in range(100)]
    for job in a:
        assert not rl.acquire(MODEL, 0, job_id=job, tenant="ten_a").allowed
    late = rl.acquire(MODEL, 0, job_id="b0", tenant="ten_b")
    assert not late.allowed and late.ahead <= 1  # behind A's head at most, not behind 100 jobs
    for i in range(1, 5):
        assert rl.acquire(MODEL, 0, job_id=f"b{i}", tenant="ten_b").ahead <= 2 * i + 1
    assert rl.line(MODEL)[:10] == ["a000", "b0", "a001", "b1", "a002", "b2", "a003", "b3", "a004", "b4"]


def test_interactive_work_overtakes_the_same_tenants_bulk_work(rdb: redis.Redis) -> None:
    rl = _limiter(rdb, concurrency=1)
    _running(rl)
    bulk = [f"bulk{i}" for i in range(8)]
    _join(rl, bulk, "ten_a", priority="bulk")
    interactive = [f"int{i}" for i in range(3)]
    _join(rl, interactive, "ten_a")
    assert rl.line(MODEL) == interactive + bulk
    assert _serve_one_at_a_time(rl, bulk + interactive) == interactive + bulk


def test_interactive_work_gives_a_tenant_no_extra_turns(rdb: redis.Redis) -> None:
    rl = _limiter(rdb, concurrency=1)
    _running(rl)
    a_bulk = [f"a-bulk{i}" for i in range(6)]
    b = [f"b{i}" for i in range(6)]
    _join(rl, a_bulk, "ten_a", priority="bulk")
    _join(rl, b, "ten_b")
    places_of_b = [rl.line(MODEL).index(job) for job in b]
    a_int = [f"a-int{i}" for i in range(3)]
    _join(rl, a_int, "ten_a")
    line = rl.line(MODEL)
    # A's interactive jobs take A's next turns, its bulk jobs move back within A's turns; B's
    # jobs keep exactly the places they had.
    assert [line.index(job) for job in b] == places_of_b
    assert [j for j in line if j.startswith("a")] == a_int + a_bulk
    assert line[:6] == ["a-int0", "b0", "a-int1", "b1", "a-int2", "b2"]


def test_a_refused_job_keeps_its_turn_whoever_asks_and_however_often(rdb: redis.Redis) -> None:
    rl = _limiter(rdb, rpm=1)
    assert rl.acquire(MODEL, 0).allowed
    _join(rl, ["a0", "a1", "a2"], "ten_a")
    _join(rl, ["b0", "b1"], "ten_b", weight=4)
    before = rl.line(MODEL)
    for _ in range(3):  # re-parked again and again (the tenant's arguments are its own already)
        for job in reversed(before):
            refused = rl.acquire(MODEL, 0, job_id=job, tenant="ten_a" if job[0] == "a" else "ten_b")
            assert not refused.allowed and refused.ahead == before.index(job)
    assert rl.line(MODEL) == before


def test_a_job_far_back_waits_as_many_windows_as_its_turn_is_away(rdb: redis.Redis) -> None:
    rl = _limiter(rdb, rpm=3)
    for _ in range(3):
        assert rl.acquire(MODEL, 0).allowed
    waits = [rl.acquire(MODEL, 0, job_id=f"j{rank}").retry_in_s for rank in range(18)]
    assert all(w <= 30.0 for w in waits[:3]) and waits[3:] == sorted(waits[3:])  # in line order
    # At most 3 admissions a window: rank r cannot go before floor(r / 3) windows have passed.
    assert waits[3:6] == [30.0] * 3 and waits[6:9] == [60.0] * 3
    assert waits[-1] == RPM_WAIT_WINDOWS_MAX * 30.0  # a few windows at most: jobs ahead may leave


def test_a_lapsed_backlog_gives_its_turns_back(rdb: redis.Redis) -> None:
    rl = _limiter(rdb, concurrency=1)
    _running(rl)
    for i in range(20):  # cancelled jobs: they never come back
        rl.acquire(MODEL, 0, holder=f"h{i}", job_id=f"dead{i}", tenant="ten_a", grace_s=0.2)
    alive = rl.acquire(MODEL, 0, holder="h-b", job_id="b0", tenant="ten_b", grace_s=5.0)
    assert not alive.allowed
    time.sleep(0.2 + 0.2 + 0.05 * 21 + 0.1)  # past every dead job's wait plus its grace
    assert rl.line(MODEL) == ["b0"]
    # A is not held back by turns it never used: its next job goes right behind B's.
    again = rl.acquire(MODEL, 0, holder="h-a", job_id="a-new", tenant="ten_a", grace_s=5.0)
    assert not again.allowed and again.ahead == 1
    assert rl.line(MODEL) == ["b0", "a-new"]


def test_leaving_or_being_admitted_takes_the_turn_and_leaves_no_keys(rdb: redis.Redis) -> None:
    rl = _limiter(rdb, concurrency=1)
    _running(rl)
    _join(rl, ["a0", "a1"], "ten_a")
    _join(rl, ["b0"], "ten_b")
    assert rl.leave_line(MODEL, "a0") and not rl.leave_line(MODEL, "a0")
    assert rl.line(MODEL) == ["b0", "a1"]
    assert _serve_one_at_a_time(rl, ["a1", "b0"]) == ["b0", "a1"]
    assert rl.line(MODEL) == []
    assert rdb.keys(f"llmq:rl:{MODEL}:fq:*") == []
    assert not rdb.exists(*(f"llmq:rl:{MODEL}:{k}" for k in ("line", "due", "want", "owner")))


def test_tokens_wanted_by_other_tenants_jobs_ahead_are_kept_for_them(rdb: redis.Redis) -> None:
    rl = _limiter(rdb, tpm=100)
    full = rl.acquire(MODEL, 100)
    assert full.allowed
    assert not rl.acquire(MODEL, 60, job_id="a-big", tenant="ten_a").allowed
    assert not rl.acquire(MODEL, 30, job_id="b-small", tenant="ten_b").allowed
    assert not rl.acquire(MODEL, 30, job_id="a-late", tenant="ten_a").allowed  # behind b-small
    rl.cancel(full.reservation)
    assert rl.acquire(MODEL, 30, job_id="b-small").allowed  # a-big's 60 + 30 fit in 100
    assert not rl.acquire(MODEL, 30, job_id="a-late").allowed  # 30 used + 60 for a-big + 30 > 100
    assert rl.acquire(MODEL, 60, job_id="a-big").allowed


def _claim(job_id: str, tenant: str, priority: str = "interactive") -> ClaimedJob:
    return ClaimedJob(
        job_id=job_id,
        tenant_id=tenant,
        lease_token="lease",
        attempt_number=1,
        max_attempts=5,
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=10,
        temperature=None,
        user=None,
        deadline_at=None,
        requested_model=MODEL,
        priority=priority,
        api_key_id=None,
    )


def test_the_gate_passes_each_jobs_tenant_weight_and_priority(rdb: redis.Redis) -> None:
    providers = ProvidersConfig(models={MODEL: ModelConfig(concurrency=1)})
    weights = {"ten_free": 1, "ten_pro": 4}
    rt = gate_runtime(rdb, providers, lambda tenant, key: _policy(tenant, weights[tenant]))
    assert isinstance(gate(rt, _claim("first", "ten_free")), Go)
    for i in range(5):
        assert isinstance(gate(rt, _claim(f"free{i}", "ten_free", "bulk")), Park)
    for i in range(4):
        assert isinstance(gate(rt, _claim(f"pro{i}", "ten_pro")), Park)
    assert isinstance(gate(rt, _claim("free-int", "ten_free")), Park)
    assert rt.limiter.line(MODEL) == ["free-int", "pro0", "pro1", "pro2", "pro3", "free0", "free1"] + [
        f"free{i}" for i in range(2, 5)
    ]


def _policy(tenant: str, weight: int) -> TenantPolicy:
    """A tenant with no limits and no budget of its own: only its weight matters here."""
    return TenantPolicy(
        tenant_id=tenant,
        tier="test",
        rpm=None,
        tpm=None,
        concurrency=None,
        weight=weight,
        budget_period="month",
        budget_usd=None,
        user_budget_usd=None,
        key_budget_usd=None,
        thresholds=(),
        webhook_url=None,
    )
