"""Tenant and key limits on the bundled Redis: rpm at submit, tpm and calls in flight in the gate,
each counted in the scope that set it, and given back when a later stage refuses or the call ends."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import redis

from llmq.config.providers_file import ModelConfig, ProvidersConfig
from llmq.models.records import ClaimedJob
from llmq.models.tenants import TenantPolicy
from llmq.tasks import gate as gate_module
from llmq.tasks.gate import CallEnd, Go, Park, after_call, gate
from llmq.tasks.gate.stages import Refusal, Ticket
from llmq.workers.tenantlimit import TenantLimiter, scope_of
from tests.unit.gate_runtime import gate_runtime

MODEL = "sim/tenanted"


def _policy(**limits: Any) -> TenantPolicy:
    base = TenantPolicy(
        tenant_id="ten_a",
        tier="custom",
        rpm=None,
        tpm=None,
        concurrency=None,
        weight=1,
        budget_period="month",
        budget_usd=None,
        user_budget_usd=None,
        key_budget_usd=None,
        thresholds=(0.8,),
        webhook_url=None,
    )
    return replace(base, **limits)


def _runtime(client: redis.Redis, policies: dict[str | None, TenantPolicy]) -> Any:
    providers = ProvidersConfig(models={MODEL: ModelConfig()})
    return gate_runtime(
        client, providers, lambda tenant_id, key_id: policies.get(key_id), tenant_lease_s=30.0
    )


def _claim(job_id: str, key_id: str | None = None, max_tokens: int = 10) -> ClaimedJob:
    return ClaimedJob(
        job_id=job_id,
        tenant_id="ten_a",
        lease_token="lease",
        attempt_number=1,
        max_attempts=5,
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=max_tokens,
        temperature=None,
        user=None,
        deadline_at=None,
        requested_model=MODEL,
        api_key_id=key_id,
    )


def test_submit_rpm_admits_its_limit_then_says_when_to_retry(rdb: redis.Redis) -> None:
    limiter = TenantLimiter(rdb)
    assert [limiter.count_request("tenant:ten_a", 3) for _ in range(3)] == [None, None, None]
    wait = limiter.count_request("tenant:ten_a", 3)
    assert wait is not None and 0 < wait <= 60
    assert limiter.count_request("tenant:ten_b", 3) is None, "another tenant has its own count"


def test_a_tenant_at_its_concurrency_waits_and_its_slot_comes_back_when_the_call_ends(
    rdb: redis.Redis,
) -> None:
    rt = _runtime(rdb, {None: _policy(concurrency=1)})
    first = gate(rt, _claim("job_1"))
    assert isinstance(first, Go) and first.tenant_hold is not None
    second = gate(rt, _claim("job_2"))
    assert isinstance(second, Park) and second.reason == "tenant_limited"
    assert rt.tenant_limiter.slots_in_use("tenant:ten_a") == 1
    after_call(rt, first, CallEnd(sent=True, transient_failure=False, total_tokens=5))
    assert rt.tenant_limiter.slots_in_use("tenant:ten_a") == 0
    assert isinstance(gate(rt, _claim("job_2")), Go), "the waiting job gets the freed slot"


def test_the_tenants_line_keeps_the_first_waiter_ahead_of_a_newcomer(rdb: redis.Redis) -> None:
    rt = _runtime(rdb, {None: _policy(concurrency=1)})
    running = gate(rt, _claim("job_1"))
    assert isinstance(running, Go)
    assert isinstance(gate(rt, _claim("job_waiting")), Park)
    after_call(rt, running, CallEnd(sent=True, transient_failure=False, total_tokens=5))
    assert isinstance(gate(rt, _claim("job_newcomer")), Park), "the newcomer may not jump the line"
    assert isinstance(gate(rt, _claim("job_waiting")), Go)


def test_a_limit_the_key_sets_itself_counts_that_key_alone(rdb: redis.Redis) -> None:
    tenant_wide = _policy(concurrency=1)
    own = _policy(concurrency=2, key_limits=frozenset({"concurrency"}))
    rt = _runtime(rdb, {None: tenant_wide, "key_plain": tenant_wide, "key_own": own})
    assert isinstance(gate(rt, _claim("job_t", key_id="key_plain")), Go)
    assert isinstance(gate(rt, _claim("job_t2")), Park), "a sibling without its own limit shares it"
    assert isinstance(gate(rt, _claim("job_k1", key_id="key_own")), Go)
    assert isinstance(gate(rt, _claim("job_k2", key_id="key_own")), Go)
    assert isinstance(gate(rt, _claim("job_k3", key_id="key_own")), Park)
    assert rt.tenant_limiter.slots_in_use("key:key_own") == 2
    assert scope_of("concurrency", "ten_a", "key_own", own.key_limits) == "key:key_own"
    assert scope_of("tpm", "ten_a", "key_own", own.key_limits) == "tenant:ten_a"


def test_tokens_per_minute_are_reserved_before_the_call_and_settled_after(rdb: redis.Redis) -> None:
    rt = _runtime(rdb, {None: _policy(tpm=300)})
    first = gate(rt, _claim("job_1", max_tokens=200))
    assert isinstance(first, Go)
    refused = gate(rt, _claim("job_2", max_tokens=200))
    assert isinstance(refused, Park) and refused.reason == "tenant_limited" and refused.delay_s > 0
    after_call(rt, first, CallEnd(sent=True, transient_failure=False, total_tokens=20))
    assert isinstance(gate(rt, _claim("job_2", max_tokens=200)), Go), "the unused output was freed"


def test_a_call_that_never_left_gives_its_tenant_tokens_back(rdb: redis.Redis) -> None:
    rt = _runtime(rdb, {None: _policy(tpm=300)})
    first = gate(rt, _claim("job_1", max_tokens=250))
    assert isinstance(first, Go)
    after_call(rt, first, CallEnd(sent=False, transient_failure=None, total_tokens=None))
    assert isinstance(gate(rt, _claim("job_2", max_tokens=250)), Go)


class _Refuses:
    def admit(self, rt: Any, ticket: Ticket, model: str) -> Refusal | None:
        return Refusal(3.0, "budget", try_next_model=False)

    def undo(self, rt: Any, ticket: Ticket, model: str) -> None:
        pass

    def release(self, rt: Any, go: Go, end: CallEnd) -> None:
        pass


def test_a_later_stage_that_refuses_gets_the_tenant_slot_and_tokens_back(
    rdb: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = _runtime(rdb, {None: _policy(concurrency=1, tpm=100)})
    monkeypatch.setattr(gate_module, "MODEL_STAGES", (*gate_module.MODEL_STAGES, _Refuses()))
    assert gate(rt, _claim("job_1", max_tokens=80)) == Park(delay_s=3.0, reason="budget")
    assert rt.tenant_limiter.slots_in_use("tenant:ten_a") == 0
    monkeypatch.undo()
    assert isinstance(gate(rt, _claim("job_2", max_tokens=80)), Go)


def test_held_slots_are_renewed_and_a_lost_one_is_reported(rdb: redis.Redis) -> None:
    rt = _runtime(rdb, {None: _policy(concurrency=2)})
    a = gate(rt, _claim("job_a"))
    b = gate(rt, _claim("job_b"))
    assert isinstance(a, Go) and isinstance(b, Go) and b.tenant_hold is not None
    assert b.tenant_hold.slot is not None
    rdb.zrem("llmq:tl:tenant:ten_a:slots", b.tenant_hold.slot[1])  # as if its lease had lapsed
    assert rt.tenant_limiter.renew_held() == [b.tenant_hold.slot[1]]
    assert rt.tenant_limiter.renew_held() == [], "a lost slot is forgotten"


def test_a_tenant_without_tpm_or_concurrency_costs_no_redis_call(rdb: redis.Redis) -> None:
    rt = _runtime(rdb, {None: _policy(rpm=10)})  # rpm is counted at submit, not here
    go = gate(rt, _claim("job_1"))
    assert isinstance(go, Go) and go.tenant_hold is None
    assert rdb.keys("llmq:tl:*") == []


def test_a_key_limited_to_some_models_falls_back_only_to_those(rdb: redis.Redis) -> None:
    from llmq.tasks.gate import model_chain

    rt = _runtime(rdb, {"key_local": _policy(allowed_models=("local/*",))})
    rt.providers = ProvidersConfig(
        models={"local/a": ModelConfig(fallbacks=["openai/gpt-4o", "local/b"]), "local/b": ModelConfig()}
    )
    claim = replace(_claim("job_1", key_id="key_local"), model="local/a", requested_model="local/a")
    assert model_chain(rt, claim)[0] == ["local/a", "local/b"]
    unrestricted = replace(claim, api_key_id=None)
    assert model_chain(rt, unrestricted)[0] == ["local/a", "openai/gpt-4o", "local/b"]


def test_interactive_work_overtakes_the_same_tenants_bulk_work_in_its_line(rdb: redis.Redis) -> None:
    rt = _runtime(rdb, {None: _policy(concurrency=1)})
    running = gate(rt, _claim("job_running"))
    assert isinstance(running, Go)
    bulk = [replace(_claim(f"job_bulk_{i}"), priority="bulk") for i in range(3)]
    for claim in bulk:
        assert isinstance(gate(rt, claim), Park)
    assert isinstance(gate(rt, _claim("job_interactive")), Park), "it came last, and waits too"
    after_call(rt, running, CallEnd(sent=True, transient_failure=False, total_tokens=5))
    assert isinstance(gate(rt, bulk[0]), Park), "the bulk job that waited first still yields"
    served = gate(rt, _claim("job_interactive"))
    assert isinstance(served, Go)
    after_call(rt, served, CallEnd(sent=True, transient_failure=False, total_tokens=5))
    assert isinstance(gate(rt, bulk[1]), Park), "bulk jobs keep their own order"
    assert isinstance(gate(rt, bulk[0]), Go)
