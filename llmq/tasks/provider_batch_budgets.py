"""The budgets of jobs that go by provider batch: reserved when their batch is sent, renewed at
each poll, settled when their lines are written back.

A job of a tenant with a budget (its own, its end user's or its key's) waits for a batch like
any bulk job. When the batch is sent, each such line's worst case *at the batch price* is
reserved against every budget that governs it (the scopes of ``gate/budget.py``), under the id
``<batch id>:<job id>``: a sender that is resumed reserves the same id again, which holds
nothing twice (``budget_reserve.lua``). A line with no room is not sent: its job goes back to
the normal path, whose budget stage refuses it (``budget_exceeded``) or parks it until the next
period, as it would any call.

The holds are kept in Redis next to the budgets themselves (``llmq:pb-holds:<batch id>``: job
id → hold), live ``lease_s`` past the last poll as the batch's job leases do (each poll renews
both), and end when their line is written: at what the provider billed for it (its answer, or
a failed line's usage), or given back for a line that never ran. A poller gone for longer than
that lets the holds expire with the leases, and the sweeper's hand-back sends the jobs the
normal way, which reserves again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from decimal import Decimal

import structlog

from llmq.models.base import utcnow
from llmq.models.records import ClaimedJob
from llmq.models.tables import ProviderBatch
from llmq.tasks.gate.budget import scopes_of, settle_hold, spent_in_db
from llmq.tasks.runtime import WorkerRuntime
from llmq.workers.budgets import BudgetHold, Period, Reservation, Scope, period_of, worst_case_units
from llmq.workers.keys import PROVIDER_BATCH_HOLDS
from llmq.workers.tokens import estimate_input_tokens

logger = structlog.get_logger(__name__)

# How long a batch's holds are kept in Redis at most: the providers' 24 h window, with room for
# a late poll. A hold itself lives only as long as the batch's leases (hold_lifetime_s).
_KEEP = timedelta(hours=26)


def _key(batch: ProviderBatch) -> str:
    return f"{PROVIDER_BATCH_HOLDS}:{batch.id}"


def hold_lifetime_s(rt: WorkerRuntime) -> float:
    config = rt.providers.provider_batches
    return config.lease_s + config.poll_interval_s


def _reserve(
    rt: WorkerRuntime, scopes: list[Scope], period: Period, amount: int, reservation: str
) -> Reservation:
    """Hold (or renew, when already held under ``reservation``) a line's worst case."""
    return rt.budgets.reserve(
        scopes,
        period,
        amount,
        lifetime_s=hold_lifetime_s(rt),
        seed=lambda unseeded, p: spent_in_db(rt, unseeded, p),
        now=utcnow(),
        reservation=reservation,
    )


def _holds(rt: WorkerRuntime, batch: ProviderBatch) -> dict[str, BudgetHold]:
    raw = rt.redis.hgetall(_key(batch))
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): BudgetHold.from_json(v)
        for k, v in raw.items()  # type: ignore[union-attr]
    }


def reserve_lines(
    rt: WorkerRuntime, batch: ProviderBatch, claims: list[ClaimedJob]
) -> tuple[list[ClaimedJob], list[ClaimedJob]]:
    """``(lines to send, lines a budget has no room for)``: every line of a job with a budget
    holds its worst case at the batch price before the provider sees it."""
    now = utcnow()
    held = _holds(rt, batch)  # a resumed sender: the same holds, renewed
    fresh: dict[str, str] = {}
    send: list[ClaimedJob] = []
    refused: list[ClaimedJob] = []
    for claim in claims:
        policy = rt.policies.get(claim.tenant_id, claim.api_key_id)
        scopes = scopes_of(policy, claim) if policy is not None and policy.has_budget else []
        if policy is None or not scopes:
            send.append(claim)
            continue
        hold = held.get(claim.job_id)
        if hold is not None:
            scopes, period, amount = list(hold.scopes), hold.period, hold.amount
        else:
            period = period_of(policy.budget_period, now)
            price = rt.prices.price(claim.model)
            max_tokens = claim.max_tokens if claim.max_tokens is not None else rt.settings.default_max_tokens
            amount = worst_case_units(
                None if price is None else price.batch(), estimate_input_tokens(claim.messages), max_tokens
            )
        answer = _reserve(rt, scopes, period, amount, f"{batch.id}:{claim.job_id}")
        if answer.hold is None:
            refused.append(claim)
            continue
        fresh[claim.job_id] = answer.hold.to_json()
        send.append(claim)
    if fresh:
        pipe = rt.redis.pipeline(transaction=False)
        pipe.hset(_key(batch), mapping=fresh)
        pipe.expire(_key(batch), _KEEP)
        pipe.execute()
    if refused:
        logger.info("provider_batch_lines_over_budget", batch_id=batch.id, jobs=len(refused))
    return send, refused


def renew_holds(rt: WorkerRuntime, batch: ProviderBatch) -> None:
    """Push back the expiry of every hold of the batch (at each poll, with its leases)."""
    for job_id, hold in _holds(rt, batch).items():
        answer = _reserve(rt, list(hold.scopes), hold.period, hold.amount, hold.reservation)
        if answer.hold is None:  # it had expired (a late poll) and the room went meanwhile
            logger.warning("provider_batch_hold_lost", batch_id=batch.id, job_id=job_id)


def settle_lines(
    rt: WorkerRuntime, batch: ProviderBatch, costs: Mapping[str, Decimal], given_back: Iterable[str] = ()
) -> None:
    """End the holds of these lines: each of ``costs`` at its cost, each of ``given_back`` (it
    never ran) with nothing spent."""
    held = _holds(rt, batch)
    ended: list[str] = []
    for job_id, cost in costs.items():
        if job_id in held:
            settle_hold(rt, held[job_id], cost)
            ended.append(job_id)
    for job_id in given_back:
        if job_id in held:
            rt.budgets.cancel(held[job_id])
            ended.append(job_id)
    if ended:
        rt.redis.hdel(_key(batch), *ended)
