"""The budget stage: the call's worst-case cost reserved, before the call, against every budget
that governs it — the tenant's, its end user's, its key's (``workers/budgets.py``, in Redis) —
and settled to the real cost when it ends.

It runs after the breaker and before the limits: a job over budget takes no rate-limit capacity.
A job whose tenant has no budget costs nothing here (the policy is cached: no Redis round trip).
A call that does not fit is not made: the job fails with ``budget_exceeded`` (which budget, what
it spent, what is left, what the call needed), or — when it asked (``on_budget_exceeded:
"wait"``) — waits parked until the next period starts (``wait_reason = "budget"``). A job whose
worst case exceeds the whole budget would wait for ever: it fails.

When the call ends: a call that never reached the provider gives its reservation back; any other
settles at what the provider billed (0 when nothing says it billed anything). A settle that
makes a scope's spend cross one of the tenant's soft thresholds writes the ``budget.threshold``
alert and its webhook event (``models/budget_alerts.py``), once per period.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import structlog

from llmq.models.base import utcnow
from llmq.models.budget_alerts import Crossing, record_crossing
from llmq.models.budget_usage import spent_usd
from llmq.models.records import ClaimedJob
from llmq.models.tenants import TenantPolicy
from llmq.tasks.enqueue import try_enqueue_webhook
from llmq.tasks.gate.stages import CallEnd, Go, Refusal, Ticket
from llmq.workers.budgets import (
    BudgetHold,
    Period,
    Reservation,
    Scope,
    Spend,
    period_of,
    to_units,
    to_usd,
    worst_case_units,
)
from llmq.workers.tokens import estimate_input_tokens

if TYPE_CHECKING:
    from llmq.tasks.runtime import WorkerRuntime

logger = structlog.get_logger(__name__)

# A reservation outlives the longest a call can run (the provider timeout, and the 5 s past it
# the lease keeper allows) by a lease: then its worker is gone, or settles a reservation that
# already expired (which still counts the cost, once).
_CALL_OVERRUN_S = 5.0


def reservation_lifetime_s(rt: WorkerRuntime) -> float:
    return rt.settings.provider_timeout_s + _CALL_OVERRUN_S + rt.settings.lease_s


def scopes_of(policy: TenantPolicy, claim: ClaimedJob) -> list[Scope]:
    """The budgets a job's calls count against: the tenant's, its end user's (when the job names
    a ``user``) and its key's, those that are set."""
    scopes = []
    if policy.budget_usd is not None:
        scopes.append(Scope("tenant", claim.tenant_id, to_units(policy.budget_usd)))
    if policy.user_budget_usd is not None and claim.user:
        scopes.append(Scope("user", claim.tenant_id, to_units(policy.user_budget_usd), user=claim.user))
    if policy.key_budget_usd is not None and claim.api_key_id:
        scopes.append(Scope("key", claim.tenant_id, to_units(policy.key_budget_usd), key_id=claim.api_key_id))
    return scopes


class BudgetStage:
    def admit(self, rt: WorkerRuntime, ticket: Ticket, model: str) -> Refusal | None:
        claim = ticket.claim
        policy = rt.policies.get(claim.tenant_id, claim.api_key_id)
        if policy is None or not policy.has_budget:
            return None
        scopes = scopes_of(policy, claim)
        if not scopes:
            return None
        now = utcnow()
        period = period_of(policy.budget_period, now)
        max_tokens = claim.max_tokens if claim.max_tokens is not None else rt.settings.default_max_tokens
        amount = worst_case_units(rt.prices.price(model), estimate_input_tokens(claim.messages), max_tokens)
        answer = rt.budgets.reserve(
            scopes,
            period,
            amount,
            lifetime_s=reservation_lifetime_s(rt),
            seed=lambda unseeded, p: spent_in_db(rt, unseeded, p),
            now=now,
        )
        if answer.hold is not None:
            ticket.budget = answer.hold
            return None
        return _refusal(claim, answer, period, now)

    def undo(self, rt: WorkerRuntime, ticket: Ticket, model: str) -> None:
        if ticket.budget is not None:
            rt.budgets.cancel(ticket.budget)
            ticket.budget = None

    def release(self, rt: WorkerRuntime, go: Go, end: CallEnd) -> None:
        hold = go.budget
        if hold is None:
            return
        if not end.sent:
            rt.budgets.cancel(hold)  # the provider never saw it
            return
        settle_hold(rt, hold, end.cost_usd)


def settle_hold(rt: WorkerRuntime, hold: BudgetHold, cost_usd: Decimal | None) -> None:
    """End ``hold`` at what the provider billed (None: nothing), and send the soft thresholds'
    alerts the spend crossed."""
    now = utcnow()
    spends = rt.budgets.settle(hold, to_units(cost_usd or 0), now=now)
    crossings = _crossings(rt, hold, spends)
    if crossings:
        _alert(rt, crossings, now)


def _refusal(claim: ClaimedJob, answer: Reservation, period: Period, now: datetime) -> Refusal:
    scope = answer.refused
    assert scope is not None
    left = max(0, scope.budget_units - answer.spent - answer.held)
    if claim.budget_wait and answer.needed <= scope.budget_units:
        return Refusal((period.end - now).total_seconds(), "budget", try_next_model=False, until=period.end)
    what = {"tenant": "the tenant's budget", "user": f"the budget of user {scope.user!r}"}.get(
        scope.kind, f"the budget of key {scope.key_id}"
    )
    message = (
        f"{what} of ${to_usd(scope.budget_units)} per {period.kind} has no room for this call: "
        f"spent ${to_usd(answer.spent)}, held by calls in flight ${to_usd(answer.held)}, "
        f"remaining ${to_usd(left)}, needed ${to_usd(answer.needed)} (its worst case); "
        f"the period ends {period.end.isoformat()}"
    )
    return Refusal(0.0, "budget_exceeded", try_next_model=False, error=message)


def spent_in_db(rt: WorkerRuntime, scopes: Sequence[Scope], period: Period) -> list[int]:
    """What the usage rollup says each scope spent in ``period`` (units): the seed of a counter
    Redis does not have."""
    with rt.db.session() as session:
        return [
            to_units(
                spent_usd(
                    session,
                    tenant_id=scope.tenant_id,
                    start=period.start,
                    end=period.end,
                    user=scope.user,
                    key_id=scope.key_id,
                )
            )
            for scope in scopes
        ]


def _crossings(rt: WorkerRuntime, hold: BudgetHold, spends: list[Spend]) -> list[Crossing]:
    policy = rt.policies.get(hold.scopes[0].tenant_id, None) if hold.scopes else None
    thresholds = policy.thresholds if policy is not None else ()
    out = []
    for spend in spends:
        budget = spend.scope.budget_units
        for threshold in thresholds:
            mark = Decimal(str(threshold)) * budget
            if spend.before < mark <= spend.after:
                scope = spend.scope
                out.append(
                    Crossing(
                        tenant_id=scope.tenant_id,
                        scope=scope.name,
                        kind=scope.kind,
                        user=scope.user,
                        key_id=scope.key_id,
                        threshold=threshold,
                        budget_usd=to_usd(budget),
                        spent_usd=to_usd(spend.after),
                        period_start=hold.period.start,
                        period_end=hold.period.end,
                    )
                )
    return out


def _alert(rt: WorkerRuntime, crossings: list[Crossing], now: datetime) -> None:
    """Write each crossing's alert (and event) in one transaction, then enqueue the events. A
    failure is logged: the call is settled all the same, and the alert is only a notice."""
    try:
        with rt.db.transaction() as session:
            event_ids = [record_crossing(session, crossing, now) for crossing in crossings]
    except Exception as exc:
        logger.error("budget_alert_failed", error=type(exc).__name__, exc_info=exc)
        return
    for crossing, event_id in zip(crossings, event_ids, strict=True):
        logger.info(
            "budget_threshold_crossed", scope=crossing.scope, threshold=crossing.threshold, event_id=event_id
        )
        if event_id is not None:
            try_enqueue_webhook(event_id)
