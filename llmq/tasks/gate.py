"""Before a call: which model, and may it go now?

::

    claim ─▶ route ("auto" → a model) ─▶ cache hit? ──yes──▶ Hit (no provider call)
                                            │no
                                            ▼
             for each model of the chain, from the job's current one:
                 breaker open? ──▶ next model ... none left ──▶ Park("circuit_open")
                 its turn in the model's line, and a slot, rpm and tpm room for it?
                     ──no──▶ Park("rate_limited") until its turn should come
                 ──yes──▶ Go(model)

Limits and breakers live in Redis (``ratelimit.py``, ``breaker.py``), so they hold across every
worker process and host. A parked job gives its claim back and waits (a Celery countdown, or the
database for long waits): no worker slot is held while it waits.

Waiting for capacity is first come, first served, per model: a job refused for lack of capacity
joins the model's line in Redis (keyed by its job id, so it keeps its place however many times it
is refused, and whichever worker claims it next) and is admitted only when every job ahead of it
has room too — a new job cannot jump the line. The limiter answers when the job's turn should
come, so waiting jobs wake in line order. Its place is kept ``max_countdown_s + 2 *
sweep_interval_s`` beyond the wait it was given (:func:`line_grace_s`): long enough for a job
parked in the database to be brought back by the sweeper, short enough that a cancelled or expired
job stops holding the line soon after.

A job admitted to a fallback because the models before it had their breaker open leaves those
models' lines at once (it is served; its place there would only hold back the jobs behind it). A
job that stops waiting any other way — cancelled, deadline passed, answered from the cache — is
not in a position to say so: its place lapses after its grace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import structlog

from llmq.config.settings import Settings
from llmq.models.records import ClaimedJob
from llmq.tasks.runtime import WorkerRuntime
from llmq.workers.cache import CachedAnswer
from llmq.workers.ratelimit import ModelLimits
from llmq.workers.routing import choose_model, fallback_chain
from llmq.workers.tokens import estimate_tokens

logger = structlog.get_logger(__name__)


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


def request_params(claim: ClaimedJob, default_max_tokens: int) -> dict[str, Any]:
    """What the call will be asked besides the messages: a job without ``max_tokens`` is sent the
    default, so it shares a cache key with a job that asked for the default, and with no job made
    under another default."""
    max_tokens = claim.max_tokens if claim.max_tokens is not None else default_max_tokens
    return {"max_tokens": max_tokens, "temperature": claim.temperature}


def gate(rt: WorkerRuntime, claim: ClaimedJob) -> Decision:
    chain, route_reason = model_chain(rt, claim)
    current = claim.current_model or chain[0]
    if current not in chain:
        chain = [current, *chain]
    cache_key = None
    if rt.cache.wanted(claim.use_cache, claim.temperature):
        params = request_params(claim, rt.settings.default_max_tokens)
        cache_key = rt.cache.key(chain[0], claim.messages, params, claim.tenant_id)
        answer = rt.cache.get(cache_key)
        if answer is not None:
            return Hit(model=chain[0], route_reason=route_reason, answer=answer)
    try:
        return _admit(rt, claim, chain[chain.index(current) :], route_reason, cache_key)
    except redis.RedisError as exc:  # limits cannot be checked: wait rather than overshoot
        logger.warning("limits_unavailable", job_id=claim.job_id, error=type(exc).__name__)
        return Park(delay_s=1.0, reason="rate_limited")


def line_grace_s(settings: Settings) -> float:
    """How long past the wait it was given a job keeps its place in a model's line: a wait longer
    than ``max_countdown_s`` parks it in the database, and the sweeper, which runs every
    ``sweep_interval_s``, enqueues it when due."""
    return settings.max_countdown_s + 2 * settings.sweep_interval_s


def _admit(
    rt: WorkerRuntime,
    claim: ClaimedJob,
    candidates: list[str],
    route_reason: str | None,
    cache_key: str | None,
) -> Decision:
    waits: list[float] = []
    passed_over: list[str] = []
    tokens = estimate_tokens(
        claim.messages, claim.max_tokens, default_max_tokens=rt.settings.default_max_tokens
    )
    for model in candidates:
        breaker = rt.breakers.check(model)
        if not breaker.allowed:
            waits.append(breaker.retry_in_s)
            passed_over.append(model)
            continue
        holder = None
        if rt.limiter.limits(model).concurrency is not None:
            holder = f"{claim.job_id}:{claim.lease_token}"
        admission = rt.limiter.acquire(
            model, tokens, holder=holder, job_id=claim.job_id, grace_s=line_grace_s(rt.settings)
        )
        if not admission.allowed:
            _abandon(rt, model, breaker.probe)
            return Park(delay_s=admission.retry_in_s, reason="rate_limited")
        _leave_lines(rt, claim.job_id, passed_over)
        return Go(
            model=model,
            route_reason=route_reason,
            reservation=admission.reservation,
            slot_holder=holder,
            probe=breaker.probe,
            cache_key=cache_key,
        )
    return Park(delay_s=max(0.1, min(waits)), reason="circuit_open")


def _leave_lines(rt: WorkerRuntime, job_id: str, models: list[str]) -> None:
    """The job is served by a fallback: out of the lines of the models it passed over, where it
    may have been waiting before their breaker opened."""
    for model in models:
        if rt.limiter.limits(model) == ModelLimits():
            continue  # an unlimited model has no line
        try:
            rt.limiter.leave_line(model, job_id)
        except redis.RedisError as exc:  # admitted already: the place lapses after its grace
            logger.warning("limits_leave_line_failed", model=model, error=type(exc).__name__)


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
