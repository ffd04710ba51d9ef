"""Before a call: which model, and may it go now?

::

    claim ─▶ route ("auto" → a model) ─▶ cache hit? ──yes──▶ Hit (no provider call)
                                            │no
                                            ▼
             for each model of the chain, from the job's current one:
                 breaker open? ──▶ next model ... none left ──▶ Park("circuit_open")
                 concurrency slot? rpm/tpm room? ──no──▶ Park("rate_limited")
                 ──yes──▶ Go(model)

Limits and breakers live in Redis (``ratelimit.py``, ``breaker.py``), so they hold across every
worker process and host. A parked job gives its claim back and waits in the database: no worker
slot is held while it waits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from llmq.models.transitions import ClaimedJob
from llmq.workers.cache import CachedAnswer
from llmq.workers.ratelimit import estimate_tokens
from llmq.workers.routing import choose_model, fallback_chain
from llmq.workers.runtime import WorkerRuntime

logger = structlog.get_logger(__name__)

SLOT_WAIT_S = (0.2, 0.7)  # a full concurrency cap frees up when some call ends: look again soon


@dataclass(frozen=True)
class Go:
    model: str
    route_reason: str | None
    reservation: str | None
    slot_holder: str | None
    probe: bool
    cache_key: str | None


@dataclass(frozen=True)
class Park:
    delay_s: float
    reason: str  # rate_limited | circuit_open


@dataclass(frozen=True)
class Hit:
    model: str
    route_reason: str | None
    answer: CachedAnswer


Decision = Go | Park | Hit


def primary_model(rt: WorkerRuntime, claim: ClaimedJob) -> tuple[str, str | None]:
    """The job's first-choice model: the one it asked for, or the router's choice for "auto"."""
    if claim.requested_model != "auto":
        return claim.requested_model, None
    model, reason = choose_model(claim.messages, rt.providers.routing)
    return model, f"auto: {reason}"


def model_chain(rt: WorkerRuntime, claim: ClaimedJob) -> tuple[list[str], str | None]:
    primary, reason = primary_model(rt, claim)
    return [primary, *fallback_chain(primary, claim.fallbacks, rt.providers)], reason


def request_params(claim: ClaimedJob) -> dict[str, Any]:
    return {"max_tokens": claim.max_tokens, "temperature": claim.temperature}


def gate(rt: WorkerRuntime, claim: ClaimedJob) -> Decision:
    chain, route_reason = model_chain(rt, claim)
    current = claim.current_model or chain[0]
    if current not in chain:
        chain = [current, *chain]
    cache_key = None
    if rt.cache.wanted(bool(claim.use_cache), claim.temperature):
        cache_key = rt.cache.key(chain[0], claim.messages, request_params(claim), claim.tenant_id)
        answer = rt.cache.get(cache_key)
        if answer is not None:
            return Hit(model=chain[0], route_reason=route_reason, answer=answer)
    try:
        return _admit(rt, claim, chain[chain.index(current) :], route_reason, cache_key)
    except redis.RedisError as exc:  # limits cannot be checked: wait rather than overshoot
        logger.warning("limits_unavailable", job_id=claim.job_id, error=type(exc).__name__)
        return Park(delay_s=1.0, reason="rate_limited")


def _admit(
    rt: WorkerRuntime,
    claim: ClaimedJob,
    candidates: list[str],
    route_reason: str | None,
    cache_key: str | None,
) -> Decision:
    waits: list[float] = []
    for model in candidates:
        breaker = rt.breakers.check(model)
        if not breaker.allowed:
            waits.append(breaker.retry_in_s)
            continue
        limits = rt.limiter.limits(model)
        holder = None
        if limits.concurrency is not None:
            holder = f"{claim.job_id}:{claim.lease_token}"
            if not rt.limiter.acquire_slot(model, holder):
                _abandon(rt, model, breaker.probe)
                return Park(delay_s=random.uniform(*SLOT_WAIT_S), reason="rate_limited")
        admission = rt.limiter.acquire(model, estimate_tokens(claim.messages, claim.max_tokens))
        if not admission.allowed:
            if holder is not None:
                rt.limiter.release_slot(model, holder)
            _abandon(rt, model, breaker.probe)
            # A little spread, so the jobs that wait for the same window do not all wake at once.
            return Park(delay_s=admission.retry_in_s + random.uniform(0, 0.05), reason="rate_limited")
        return Go(
            model=model,
            route_reason=route_reason,
            reservation=admission.reservation,
            slot_holder=holder,
            probe=breaker.probe,
            cache_key=cache_key,
        )
    return Park(delay_s=max(0.1, min(waits)), reason="circuit_open")


def _abandon(rt: WorkerRuntime, model: str, probe: bool) -> None:
    if probe:
        rt.breakers.abandon_probe(model)


def after_call(
    rt: WorkerRuntime, go: Go, *, transient_failure: bool | None, total_tokens: int | None
) -> None:
    """Give back what the gate took. ``transient_failure`` None: the call was stopped before it
    said anything about the provider's health (cancelled, shutdown)."""
    try:
        if go.slot_holder is not None:
            rt.limiter.release_slot(go.model, go.slot_holder)
        if go.reservation is not None and total_tokens is not None:
            rt.limiter.settle(go.reservation, total_tokens)
        if transient_failure is None:
            _abandon(rt, go.model, go.probe)
        else:
            rt.breakers.record(go.model, success=not transient_failure, probe=go.probe)
    except redis.RedisError as exc:  # slots expire by their lease, probes by theirs
        logger.warning("limits_release_failed", model=go.model, error=type(exc).__name__)
