"""How a claimed attempt ends: completed (one job or a batch), failed or retried, handed back.

Each move is a compare-and-set on the lease the worker holds, so a late worker (its job cancelled
or its lease taken over) changes nothing but its own attempt row, recorded as ``discarded``.
Webhook events are written in the same transaction as the final state (an outbox): the caller
enqueues their delivery after the commit. A worker that sends the first attempt itself passes
``send_now``: the event is then claimed for that send in the same transaction (as
``claim_event`` would), and comes back in ``TransitionResult.events`` ready to POST. The other
moves to a final state (cancel, deadline, lost worker) write their event with :func:`ended`.
"""

from __future__ import annotations

import functools
import json
import operator
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from types import SimpleNamespace
from typing import Any

from sqlalchemy import TextClause, select, text, update
from sqlalchemy.orm import Session

from llmq.models.base import isoformat, new_id
from llmq.models.db import as_arrays, on_postgres
from llmq.models.outbox import EventToSend
from llmq.models.records import (
    CLAIMED_COLUMNS,
    EVENT_TYPES,
    CallFailure,
    CallResult,
    ClaimedJob,
    Completion,
    SendNow,
    TransitionResult,
)
from llmq.models.rollup import add_usage, batch_rollup_sql, dims_of, usage_of_failure, usage_of_result
from llmq.models.state import AttemptOutcome, JobStatus, WebhookEventStatus
from llmq.models.statements import (
    ATTEMPTS,
    ATTRIBUTE_OF,
    EVENTS,
    INSERT_EVENT,
    JOB_COLUMNS,
    JOBS,
    UNSET_JOB,
    compare_and_set,
    final_values,
    holds_lease,
    update_attempt,
    update_held_job,
)
from llmq.models.tables import job_public


@functools.cache
def _end_attempt(keys: tuple[str, ...]) -> Any:
    """End an attempt that is still open: one that has ended (marked ``lost`` by the sweeper, or
    closed by a commit that is now being retried after an outage) keeps what it says."""
    return update_attempt(keys).where(ATTEMPTS.c.ended_at.is_(None))


def _finish_attempt(session: Session, claim: ClaimedJob, now: datetime, **values: Any) -> bool:
    """End the attempt; True if this write ended it (the usage rollup counts it then, once)."""
    values["ended_at"] = now
    params = {"w_job_id": claim.job_id, "w_number": claim.attempt_number}
    result = session.execute(_end_attempt(tuple(values)), params | {f"v_{k}": v for k, v in values.items()})
    return bool(getattr(result, "rowcount", 0))


def _plus(spent: Decimal | None, cost: Decimal | None) -> Decimal | None:
    """A job's cost after one more attempt: the sum of the priced ones, None while none was."""
    if cost is None:
        return spent
    return cost if spent is None else spent + cost


def _held_params(claim: ClaimedJob, values: dict[str, Any]) -> dict[str, Any]:
    return {"w_id": claim.job_id, "w_token": claim.lease_token, **{f"v_{k}": v for k, v in values.items()}}


# What a completion writes, stated once for complete_job, the batch statement and completed_view:
# the same for every job...
_COMPLETED: dict[str, Any] = {
    "status": JobStatus.COMPLETED.value,
    "progress": 1.0,
    "partial_text": None,
    "error_type": None,
    "error_message": None,
    "lease_token": None,
    "lease_expires_at": None,
}
# ...the time of the completion...
_SET_TO_NOW = ("completed_at", "updated_at")


# ...and the call's result (the job's cost: what its earlier attempts cost, plus this call).
def _result_values(result: CallResult, spent_usd: Decimal | None = None) -> dict[str, Any]:
    return {
        "result_text": result.text,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "cached_tokens": result.cached_tokens,
        "cache_write_tokens": result.cache_write_tokens,
        "cost_usd": _plus(spent_usd, result.cost_usd),
        "served_by": result.served_by,
        "cached": result.cached,
        "degraded": result.degraded,
        "result_extra": result.extra,
    }


def complete_job(
    session: Session,
    claim: ClaimedJob,
    result: CallResult,
    now: datetime,
    *,
    send_now: SendNow | None = None,
) -> TransitionResult:
    """``processing → completed`` if this worker still holds the job; else the result is discarded
    (the attempt still records, and the rollup counts, what the provider billed for it)."""
    values = {**_COMPLETED, **_result_values(result, claim.spent_usd), **dict.fromkeys(_SET_TO_NOW, now)}
    job = session.execute(update_held_job(tuple(values), True), _held_params(claim, values)).first()
    applied = job is not None
    ended_here = _finish_attempt(
        session,
        claim,
        now,
        outcome=(_success_outcome(result) if applied else AttemptOutcome.DISCARDED).value,
        http_status=result.http_status,
        latency_ms=result.latency_ms,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        cached_tokens=result.cached_tokens,
        cache_write_tokens=result.cache_write_tokens,
        cost_usd=result.cost_usd,
    )
    if ended_here:
        add_usage(session, [usage_of_result(claim, result, now)])
    if job is None:
        return TransitionResult(job=None, applied=False)
    return ended(session, claim.job_id, JobStatus.COMPLETED, now, job, send_now=send_now)


# The batch statement's inputs, one array each (whose SQL type they are cast to): the claim's, the
# columns of _result_values the batch passes as they are, the attempt's, the event's.
_BATCH_INPUTS = {
    "id": "text",
    "token": "text",
    "number": "integer",
    "result_text": "text",
    "finish_reason": "text",
    "prompt_tokens": "integer",
    "completion_tokens": "integer",
    "cached_tokens": "integer",
    "cache_write_tokens": "integer",
    "cost_usd": "numeric",
    "served_by": "text",
    "cached": "boolean",
    "degraded": "boolean",
    "result_extra": "jsonb",  # passed as JSON text (``_json_or_none``)
    "outcome": "text",
    "http_status": "integer",
    "latency_ms": "integer",
    "attempt_cost_usd": "numeric",
    "attempt_model": "text",
    "end_user": "text",
    "api_key_id": "text",
    "dims": "text",
    "tenant_id": "text",
    "event_id": "text",
    "url": "text",
    "payload": "text",
}
# The columns of _result_values the batch computes from its inputs rather than passes.
_COMPUTED_IN_BATCH = {"total_tokens": "input.prompt_tokens + input.completion_tokens"}
_RESULT_COLUMNS = tuple(_result_values(CallResult("", "", 0, 0, served_by=None, cost_usd=None, latency_ms=0)))
# Of them, the ones each completion passes in an array as they are (read from the job's view);
# result_extra is passed too, serialised to JSON text first.
_RESULT_INPUTS = tuple(
    column for column in _RESULT_COLUMNS if column not in _COMPUTED_IN_BATCH and column != "result_extra"
)


def _json_or_none(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _sql_literal(value: Any) -> str:
    """A constant of ``_COMPLETED`` as the batch statement's text writes it."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        assert "'" not in value, value
        return f"'{value}'"
    return repr(value)


def _complete_from_arrays() -> TextClause:
    """One statement completes a whole batch: the jobs still held move to ``completed``; every
    attempt of the batch is closed, as ``discarded`` when its job was not held any more
    (cancelled, or its lease taken over); the completed jobs' webhook events are written; the
    attempts it closed are added to the usage rollup and totals (``rollup.batch_rollup_sql``).

    The inputs and the job's new values are derived from ``_BATCH_INPUTS`` and from what
    :func:`complete_job` writes (``_COMPLETED``, ``_result_values``, ``_SET_TO_NOW``), so the
    batch and the single completion cannot drift apart."""
    arrays = ", ".join(f"CAST(:{name} AS {sql_type}[])" for name, sql_type in _BATCH_INPUTS.items())
    names = ", ".join(_BATCH_INPUTS)
    assignments = [f"{column} = {_sql_literal(value)}" for column, value in _COMPLETED.items()]
    assignments += [
        f"{column} = {_COMPUTED_IN_BATCH.get(column, f'input.{column}')}" for column in _RESULT_COLUMNS
    ]
    assignments += [f"{column} = :now" for column in _SET_TO_NOW]
    return text(
        f"""
    WITH input AS (
        SELECT * FROM unnest({arrays}) AS t({names})
    ), done AS (
        UPDATE {JOBS.name} AS jobs SET {", ".join(assignments)}
        FROM input
        WHERE jobs.id = input.id AND jobs.status = '{JobStatus.PROCESSING.value}'
            AND jobs.lease_token = input.token
        RETURNING jobs.id
    ), closed AS (
        UPDATE {ATTEMPTS.name} AS attempts SET
            outcome = CASE WHEN done.id IS NULL THEN '{AttemptOutcome.DISCARDED.value}'
                           ELSE input.outcome END,
            ended_at = :now, http_status = input.http_status, latency_ms = input.latency_ms,
            prompt_tokens = input.prompt_tokens, completion_tokens = input.completion_tokens,
            cached_tokens = input.cached_tokens, cache_write_tokens = input.cache_write_tokens,
            cost_usd = input.attempt_cost_usd
        FROM input LEFT JOIN done ON done.id = input.id
        WHERE attempts.job_id = input.id AND attempts.number = input.number
            AND attempts.ended_at IS NULL
        RETURNING attempts.job_id, attempts.number
    ), {batch_rollup_sql("input", "closed")}, announced AS (
        INSERT INTO {EVENTS.name} (id, job_id, tenant_id, type, url, payload, status, attempts,
                                   next_attempt_at, created_at, updated_at)
        SELECT input.event_id, input.id, input.tenant_id, '{EVENT_TYPES[JobStatus.COMPLETED]}',
               input.url, input.payload, '{WebhookEventStatus.PENDING.value}', :event_attempts,
               :event_due, :now, :now
        FROM input JOIN done ON done.id = input.id
        WHERE input.event_id IS NOT NULL
    )
    SELECT id FROM done
    """
    )


# The claim's fields that are the job's columns, under the job's attribute names (attempt_number
# is attempts, requested_model is model, user is end_user, ...): derived from CLAIMED_COLUMNS, the
# mapping the claim is read by, so what the claim carries the view carries too.
_CLAIM_FIELDS = tuple(CLAIMED_COLUMNS)
_CLAIM_ATTRIBUTES = tuple(ATTRIBUTE_OF[column] for column in CLAIMED_COLUMNS.values())
_READ_CLAIM = operator.attrgetter(*_CLAIM_FIELDS)
# A completed job's columns none of the claim, the result and the time give (the claim does not
# carry these: cleared, or equal for every completion).
_UNSET_COMPLETED_JOB = {**UNSET_JOB, **_COMPLETED}
assert not set(_COMPLETED) & set(_CLAIM_ATTRIBUTES)


def completed_view(claim: ClaimedJob, result: CallResult, now: datetime) -> SimpleNamespace:
    """The job as :func:`complete_job` leaves it, from the claim and the result: what
    ``job_public`` (the status and the webhook payload) needs, without reading the row back.
    Built from the same pieces as the completion's writes, with no field restated here."""
    view: dict[str, Any] = dict(_UNSET_COMPLETED_JOB)
    view.update(zip(_CLAIM_ATTRIBUTES, _READ_CLAIM(claim), strict=True))
    view.update(_result_values(result, claim.spent_usd))
    view.update(dict.fromkeys(_SET_TO_NOW, now))
    view["id"] = claim.job_id
    if view["cost_usd"] is not None:  # as the numeric(18, 8) column will hold it
        view["cost_usd"] = view["cost_usd"].quantize(_COST_STEP, rounding=ROUND_HALF_UP)
    return SimpleNamespace(**view)


_COST_STEP = Decimal("0.00000001")
_COMPLETE_FROM_ARRAYS = _complete_from_arrays()


def complete_jobs(
    session: Session, completions: list[Completion], now: datetime, *, send_now: SendNow | None = None
) -> list[TransitionResult]:
    """:func:`complete_job` for a batch, one result per completion in the same order. On Postgres
    the whole batch is one statement, whatever its size (jobs, attempts and webhook events), so a
    worker finishing many calls at once spends one round trip on them, not four per job."""
    if not on_postgres(session):
        return [complete_job(session, c.claim, c.result, now, send_now=send_now) for c in completions]
    views = [completed_view(c.claim, c.result, now) for c in completions]
    events = [_event_row(view, JobStatus.COMPLETED, now, send_now) for view in views]
    rows = [
        {
            "id": c.claim.job_id,
            "token": c.claim.lease_token,
            "number": c.claim.attempt_number,
            **{column: getattr(view, column) for column in _RESULT_INPUTS},
            "result_extra": _json_or_none(c.result.extra),
            "outcome": _success_outcome(c.result).value,
            "http_status": c.result.http_status,
            "latency_ms": c.result.latency_ms,
            "attempt_cost_usd": c.result.cost_usd,
            "attempt_model": c.claim.model,
            "end_user": c.claim.user or "",
            "api_key_id": c.claim.api_key_id or "",
            "dims": dims_of(c.claim.metadata),
            "tenant_id": c.claim.tenant_id,
            "event_id": event["id"] if event else None,
            "url": event["url"] if event else None,
            "payload": event["payload"] if event else None,
        }
        for c, view, event in zip(completions, views, events, strict=True)
    ]
    first_attempt = _first_attempt(now, send_now)
    completed = set(
        session.scalars(
            _COMPLETE_FROM_ARRAYS,
            {
                **as_arrays(rows),
                "now": now,
                "event_attempts": first_attempt[0],
                "event_due": first_attempt[1],
                "day": now.date(),
            },
        )
    )
    results: list[TransitionResult] = []
    for c, view, event in zip(completions, views, events, strict=True):
        if c.claim.job_id not in completed:
            results.append(TransitionResult(job=None, applied=False))
            continue
        result = TransitionResult(job=view, applied=True)
        if event is not None:
            _list_event(session, result, event, send_now)
        results.append(result)
    return results


def _success_outcome(result: CallResult) -> AttemptOutcome:
    if result.cached:
        return AttemptOutcome.CACHED
    if result.degraded:
        return AttemptOutcome.DEGRADED
    return AttemptOutcome.SUCCESS


def fail_attempt(
    session: Session,
    claim: ClaimedJob,
    failure: CallFailure,
    now: datetime,
    *,
    retry_at: datetime | None,
    wait_reason: str | None = None,
    enqueued: bool = False,
    next_model: str | None = None,
    send_now: SendNow | None = None,
) -> TransitionResult:
    """Record a failed call; put the job back to ``queued`` for ``retry_at`` (on ``next_model``
    when a fallback is taken), or fail it. A call the provider billed adds its cost to the job's
    and records its usage on the attempt."""
    outcome = AttemptOutcome.RETRYABLE_ERROR if failure.retryable else AttemptOutcome.PERMANENT_ERROR
    common: dict[str, Any] = {"lease_token": None, "lease_expires_at": None, "updated_at": now}
    billed = failure.billed
    if billed is not None and billed.cost_usd is not None:
        common["cost_usd"] = _plus(claim.spent_usd, billed.cost_usd)
    if retry_at is not None:
        values: dict[str, Any] = {
            "status": JobStatus.QUEUED.value,
            "progress": 0.0,
            "partial_text": None,
            "next_attempt_at": retry_at,
            "wait_reason": wait_reason,
            # None: parked in the database until the sweeper enqueues it when due.
            "enqueued_at": now if enqueued else None,
            "error_type": failure.error_type,
            "error_message": failure.message,
            **common,
        }
        if next_model is not None:
            values.update(current_model=next_model, model_attempts=0)
    else:
        values = {**final_values(JobStatus.FAILED, failure.error_type, failure.message, now), **common}
    applied = compare_and_set(
        session,
        update(JOBS)
        .where(holds_lease(claim.job_id, claim.lease_token))
        .values(**values)
        .execution_options(synchronize_session=False),
    )
    usage: dict[str, Any] = {}
    if billed is not None:
        usage = {
            "prompt_tokens": billed.prompt_tokens,
            "completion_tokens": billed.completion_tokens,
            "cached_tokens": billed.cached_tokens,
            "cache_write_tokens": billed.cache_write_tokens,
            "cost_usd": billed.cost_usd,
        }
    ended_here = _finish_attempt(
        session,
        claim,
        now,
        outcome=(outcome if applied else AttemptOutcome.DISCARDED).value,
        error_type=failure.error_type,
        error_message=failure.message[:2000],
        http_status=failure.http_status,
        retry_after_s=failure.retry_after_s,
        latency_ms=failure.latency_ms,
        **usage,
    )
    if ended_here:
        add_usage(session, [usage_of_failure(claim, failure, now)])
    if not applied:
        return TransitionResult(job=None, applied=False)
    if retry_at is not None:
        return TransitionResult(job=None, applied=True)
    return ended(session, claim.job_id, JobStatus.FAILED, now, send_now=send_now)


def hand_back(session: Session, claim: ClaimedJob, now: datetime) -> bool:
    """``processing → queued`` at once: the worker is shutting down (a deploy) mid-call."""
    applied = compare_and_set(
        session,
        update(JOBS)
        .where(holds_lease(claim.job_id, claim.lease_token))
        .values(
            status=JobStatus.QUEUED.value,
            progress=0.0,
            partial_text=None,
            lease_token=None,
            lease_expires_at=None,
            next_attempt_at=None,
            wait_reason=None,
            enqueued_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False),
    )
    outcome = AttemptOutcome.INTERRUPTED if applied else AttemptOutcome.DISCARDED
    _finish_attempt(session, claim, now, outcome=outcome.value, error_type="interrupted")
    return applied


def discard_attempt(session: Session, claim: ClaimedJob, now: datetime, latency_ms: int) -> None:
    """The call was stopped because the job was cancelled or its lease taken over."""
    _finish_attempt(session, claim, now, outcome=AttemptOutcome.DISCARDED.value, latency_ms=latency_ms)


def ended(
    session: Session,
    job_id: str,
    status: JobStatus,
    now: datetime,
    job: Any = None,
    *,
    send_now: SendNow | None = None,
) -> TransitionResult:
    """After a move to a final state: write the job's webhook event (the outbox). ``job`` is the
    ended job (a Job, or a row with its attributes), read here when not given."""
    if job is None:
        job = session.execute(select(*JOB_COLUMNS).where(JOBS.c.id == job_id)).one()
    result = TransitionResult(job=job, applied=True)
    event = _event_row(job, status, now, send_now)
    if event is not None:
        session.execute(INSERT_EVENT, event)
        _list_event(session, result, event, send_now)
    return result


def _first_attempt(now: datetime, send_now: SendNow | None) -> tuple[int, datetime]:
    """A new event's ``attempts`` and ``next_attempt_at``: due now for the webhooks queue, or
    already claimed for the caller's own first attempt."""
    if send_now is None:
        return 0, now
    return 1, now + timedelta(seconds=send_now.hold_s)


def _event_row(job: Any, status: JobStatus, now: datetime, send_now: SendNow | None) -> dict[str, Any] | None:
    """The webhook event row of a job that just ended, if it has a webhook."""
    if not job.webhook_url:
        return None
    attempts, due = _first_attempt(now, send_now)
    return {
        "id": new_id("msg_"),
        "job_id": job.id,
        "tenant_id": job.tenant_id,
        "type": EVENT_TYPES[status],
        "url": job.webhook_url,
        "payload": json.dumps(
            {"type": EVENT_TYPES[status], "timestamp": isoformat(now), "data": job_public(job)},
            separators=(",", ":"),
        ),
        "status": WebhookEventStatus.PENDING.value,
        "attempts": attempts,
        "next_attempt_at": due,
        "created_at": now,
        "updated_at": now,
    }


def _list_event(
    session: Session, transition: TransitionResult, event: dict[str, Any], send_now: SendNow | None
) -> None:
    """List a written event in the result: for the webhooks queue, or claimed for the caller."""
    if send_now is None:
        transition.event_ids.append(event["id"])
    else:
        secret = send_now.secret(session, event["tenant_id"])
        transition.events.append(EventToSend(event["id"], event["url"], event["payload"], secret, attempt=1))
