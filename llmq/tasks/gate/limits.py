"""The limits stage: the model's fleet-wide rpm, tpm and concurrency (``workers/ratelimit.py``,
in Redis), in fair shares between tenants.

Waiting for capacity is fair between tenants, per model: a job refused for lack of capacity joins
the model's line in Redis (keyed by its job id, so it keeps its place however many times it is
refused, and whichever worker claims it next) and is admitted only when every job ahead of it has
room too. Its place is a turn of its tenant: tenants take turns round robin, weighted by their
tier's ``weight`` (from the policy cache, ``tasks/tenancy.py``), so a tenant with 10,000 jobs
waiting delays another's next job by a few turns, not by 10,000 calls; within a tenant, its
``interactive`` jobs go before its ``bulk`` ones, first come, first served in each. The limiter
answers when the job's turn should come, so waiting jobs wake in line order. Its place is kept
``max_countdown_s + 2 * sweep_interval_s`` beyond the wait it was given (:func:`line_grace_s`):
long enough for a job parked in the database to be brought back by the sweeper, short enough that
a cancelled or expired job stops holding the line soon after.

A job admitted to a fallback because the models before it had their breaker open leaves those
models' lines at once (it is served; its place there would only hold back the jobs behind it). A
job that stops waiting any other way — cancelled, deadline passed, answered from the cache — is
not in a position to say so: its place lapses after its grace.

When the call ends, the slot is given back and the reservation settled to the tokens the
provider reported; a call that never reached the provider gives its request and tokens back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis
import structlog
from sqlalchemy.exc import SQLAlchemyError

from llmq.config.settings import Settings
from llmq.models.records import ClaimedJob
from llmq.tasks.gate.stages import CallEnd, Go, Refusal, Ticket
from llmq.workers.ratelimit import ModelLimits
from llmq.workers.tokens import estimate_tokens

if TYPE_CHECKING:
    from llmq.tasks.runtime import WorkerRuntime

logger = structlog.get_logger(__name__)


def line_grace_s(settings: Settings) -> float:
    """How long past the wait it was given a job keeps its place in a model's line: a wait longer
    than ``max_countdown_s`` parks it in the database, and the sweeper, which runs every
    ``sweep_interval_s``, enqueues it when due."""
    return settings.max_countdown_s + 2 * settings.sweep_interval_s


class LimitsStage:
    def admit(self, rt: WorkerRuntime, ticket: Ticket, model: str) -> Refusal | None:
        claim = ticket.claim
        tokens = estimate_tokens(
            claim.messages, claim.max_tokens, default_max_tokens=rt.settings.default_max_tokens
        )
        limits = rt.limiter.limits(model)
        holder = None
        if limits.concurrency is not None:
            holder = f"{claim.job_id}:{claim.lease_token}"
        admission = rt.limiter.acquire(
            model,
            tokens,
            holder=holder,
            job_id=claim.job_id,
            grace_s=line_grace_s(rt.settings),
            tenant=claim.tenant_id,
            weight=_weight(rt, claim) if limits != ModelLimits() else 1,
            priority=claim.priority,
        )
        if not admission.allowed:
            return Refusal(admission.retry_in_s, "rate_limited", try_next_model=False)
        ticket.reservation, ticket.slot_holder = admission.reservation, holder
        _leave_lines(rt, claim.job_id, ticket.passed_over)
        return None

    def undo(self, rt: WorkerRuntime, ticket: Ticket, model: str) -> None:
        if ticket.slot_holder is not None:
            rt.limiter.release_slot(model, ticket.slot_holder)
        rt.limiter.cancel(ticket.reservation)
        ticket.reservation = ticket.slot_holder = None

    def release(self, rt: WorkerRuntime, go: Go, end: CallEnd) -> None:
        if go.slot_holder is not None:
            rt.limiter.release_slot(go.model, go.slot_holder)
        if go.reservation is None:
            return
        if not end.sent:
            rt.limiter.cancel(go.reservation)  # the provider never saw it
        elif end.total_tokens is not None:
            rt.limiter.settle(go.reservation, end.total_tokens)


def _weight(rt: WorkerRuntime, claim: ClaimedJob) -> int:
    """The tenant's share in a busy model's line (its tier's weight), from the policy cache; 1
    when the tenant is gone or its policy cannot be read now (the job still gets its turns)."""
    try:
        policy = rt.policies.get(claim.tenant_id, claim.api_key_id)
    except SQLAlchemyError as exc:
        logger.warning("limits_policy_unavailable", tenant_id=claim.tenant_id, error=type(exc).__name__)
        return 1
    return policy.weight if policy is not None else 1


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
