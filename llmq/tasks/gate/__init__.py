"""Before a call: which model, and may it go now?

::

    claim ─▶ route ("auto" → a model) ─▶ cache hit? ──yes──▶ Hit (no provider call)
                                            │no
                                            ▼
             a bulk job for a provider batch? ──yes──▶ Park("provider_batch") for the gatherer
                                            │no
                                            ▼
             for each model of the chain, from the job's current one:
                 breaker open? ──▶ next model ... none left ──▶ Park("circuit_open")
                 budget has no room for its worst case? ──▶ Refuse("budget_exceeded"),
                     or Park("budget") until the next period when the job asked to wait
                 the tenant's own tpm and calls in flight? ──no──▶ Park("tenant_limited")
                 its turn in the model's line, and a slot, rpm and tpm room for it?
                     ──no──▶ Park("rate_limited") until its turn should come
                 ──yes──▶ Go(model)

Limits and breakers live in Redis (``ratelimit.py``, ``breaker.py``), so they hold across every
worker process and host. A parked job gives its claim back and waits (a Celery countdown, or the
database for long waits): no worker slot is held while it waits.

The gate is a list of stages, each a module here with ``admit`` (and, for the model stages,
``undo`` and ``release``): :mod:`~llmq.tasks.gate.route`, :mod:`~llmq.tasks.gate.cache`,
:mod:`~llmq.tasks.gate.provider_batch` once per job, then :mod:`~llmq.tasks.gate.breaker`,
:mod:`~llmq.tasks.gate.budget`, :mod:`~llmq.tasks.gate.tenant` and
:mod:`~llmq.tasks.gate.limits` for each model of the chain (:mod:`~llmq.tasks.gate.stages` says
how they fit together). A new stage is one module and one line in ``JOB_STAGES`` or
``MODEL_STAGES``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis
import structlog

from llmq.models.records import ClaimedJob
from llmq.tasks.gate.breaker import BreakerStage
from llmq.tasks.gate.budget import BudgetStage
from llmq.tasks.gate.cache import CacheStage, request_params
from llmq.tasks.gate.limits import LimitsStage, line_grace_s
from llmq.tasks.gate.provider_batch import ProviderBatchStage
from llmq.tasks.gate.route import RouteStage, model_chain, primary_model
from llmq.tasks.gate.stages import CallEnd, Decision, Go, Hit, JobStage, ModelStage, Park, Refuse, Ticket
from llmq.tasks.gate.tenant import TenantLimitsStage

if TYPE_CHECKING:
    from llmq.tasks.runtime import WorkerRuntime

__all__ = [
    "CallEnd",
    "Decision",
    "Go",
    "Hit",
    "Park",
    "Refuse",
    "after_call",
    "gate",
    "line_grace_s",
    "model_chain",
    "primary_model",
    "request_params",
]

logger = structlog.get_logger(__name__)

JOB_STAGES: tuple[JobStage, ...] = (RouteStage(), CacheStage(), ProviderBatchStage())
MODEL_STAGES: tuple[ModelStage, ...] = (BreakerStage(), BudgetStage(), TenantLimitsStage(), LimitsStage())


def gate(rt: WorkerRuntime, claim: ClaimedJob) -> Decision:
    ticket = Ticket(claim)
    for job_stage in JOB_STAGES:
        decided = job_stage.admit(rt, ticket)
        if decided is not None:
            return decided
    try:
        return _admit_a_model(rt, ticket)
    except redis.RedisError as exc:  # limits cannot be checked: wait rather than overshoot
        logger.warning("limits_unavailable", job_id=claim.job_id, error=type(exc).__name__)
        return Park(delay_s=1.0, reason="rate_limited")


def _admit_a_model(rt: WorkerRuntime, ticket: Ticket) -> Decision:
    waits: list[float] = []
    for model in ticket.candidates:
        admitted: list[ModelStage] = []
        refusal = None
        for stage in MODEL_STAGES:
            refusal = stage.admit(rt, ticket, model)
            if refusal is not None:
                break
            admitted.append(stage)
        if refusal is None:
            return Go(
                model=model,
                route_reason=ticket.route_reason,
                reservation=ticket.reservation,
                slot_holder=ticket.slot_holder,
                probe=ticket.probe,
                cache_key=ticket.cache_key,
                budget=ticket.budget,
                tenant_hold=ticket.tenant_hold,
            )
        for stage in reversed(admitted):
            stage.undo(rt, ticket, model)
        if refusal.error is not None:
            return Refuse(error_type=refusal.reason, message=refusal.error)
        if not refusal.try_next_model:
            return Park(delay_s=refusal.wait_s, reason=refusal.reason, until=refusal.until)
        waits.append(refusal.wait_s)
        ticket.passed_over.append(model)
    return Park(delay_s=max(0.1, min(waits)), reason="circuit_open")


def after_call(rt: WorkerRuntime, go: Go, end: CallEnd) -> None:
    """Give back what the model stages took, in reverse order."""
    for stage in reversed(MODEL_STAGES):
        try:
            stage.release(rt, go, end)
        except redis.RedisError as exc:  # slots expire by their lease, probes by theirs
            logger.warning("limits_release_failed", model=go.model, error=type(exc).__name__)
