"""Every change of a job's state, as compare-and-set updates inside the caller's transaction.

The API, the CLI and the tasks all call these functions, so no rule lives in two places.
A transition that finds the job in another state than it expects changes nothing and says so:
that is what makes a duplicate task delivery, a late worker or a cancel race harmless.
Webhook events are written in the same transaction as the final state (an outbox): the caller
enqueues their delivery after the commit. A worker that sends the first attempt itself passes
``send_now``: the event is then claimed for that send in the same transaction (as
``claim_event`` would), and comes back in ``TransitionResult.events`` ready to POST.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Executable,
    Table,
    TextClause,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llmq.models.base import isoformat, new_id
from llmq.models.db import as_arrays, on_postgres
from llmq.models.state import ACTIVE_STATUSES, AttemptOutcome, JobStatus, WebhookEventStatus
from llmq.models.tables import Attempt, Job, Tenant, WebhookEvent, job_public
from llmq.models.webhook_events import EventToSend

# Core tables for the hot path (claim, attempt, completion, events): no unit of work, no identity
# map, no objects built only to be serialised.
JOBS = cast(Table, Job.__table__)
ATTEMPTS = cast(Table, Attempt.__table__)
EVENTS = cast(Table, WebhookEvent.__table__)
TENANTS = cast(Table, Tenant.__table__)
# Every column of a job under its attribute name, so a returned row reads like a Job for job_public.
JOB_COLUMNS = [attr.columns[0].label(attr.key) for attr in Job.__mapper__.column_attrs]
_UNSET_JOB = {attr.key: None for attr in Job.__mapper__.column_attrs}
_COLUMN_OF = {attr.key: attr.columns[0].name for attr in Job.__mapper__.column_attrs}
# What job_public and the webhook event need: not the prompt, not the idempotency fields.
_NOT_PUBLIC = {"messages", "request_fingerprint", "idempotency_key", "partial_text", "lease_token"}
PUBLIC_JOB_COLUMNS = [column for column in JOB_COLUMNS if column.key not in _NOT_PUBLIC]

# Hot-path statements are built once and run with parameters: building a statement and its cache
# key costs more CPU than running it.
INSERT_JOB = insert(JOBS)
INSERT_ATTEMPT = insert(ATTEMPTS)
INSERT_EVENT = insert(EVENTS)


@functools.cache
def _update_held_job(keys: tuple[str, ...], returning: bool) -> Any:
    """``UPDATE jobs SET <keys> WHERE id, status processing and lease token match``, with the
    new values as parameters ``v_<key>`` (and ``w_id``, ``w_token``)."""
    statement = (
        update(JOBS)
        .where(
            JOBS.c.id == bindparam("w_id"),
            JOBS.c.status == JobStatus.PROCESSING.value,
            JOBS.c.lease_token == bindparam("w_token"),
        )
        .values({key: bindparam(f"v_{key}", type_=JOBS.c[key].type) for key in keys})
    )
    return statement.returning(*PUBLIC_JOB_COLUMNS) if returning else statement


@functools.cache
def _update_attempt(keys: tuple[str, ...]) -> Any:
    return (
        update(ATTEMPTS)
        .where(ATTEMPTS.c.job_id == bindparam("w_job_id"), ATTEMPTS.c.number == bindparam("w_number"))
        .values({key: bindparam(f"v_{key}", type_=ATTEMPTS.c[key].type) for key in keys})
    )


def _held_params(claim: ClaimedJob, values: dict[str, Any]) -> dict[str, Any]:
    return {"w_id": claim.job_id, "w_token": claim.lease_token, **{f"v_{k}": v for k, v in values.items()}}


EVENT_TYPES = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


class JobNotFound(LookupError):
    """No such job for this tenant (another tenant's job is not found either)."""


class JobAlreadyEnded(Exception):
    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} already ended as {job.status}")
        self.job_id = job.id
        self.status = job.status


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, job: Job) -> None:
        super().__init__("Idempotency-Key reused with a different request")
        self.job = job


@dataclass(frozen=True)
class NewJob:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int | None = None
    temperature: float | None = None
    user: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    fallbacks: list[str] | None = None
    use_cache: bool | None = None
    degraded_ok: bool = False

    def fingerprint(self) -> str:
        canonical = json.dumps(
            {
                "model": self.model,
                "messages": self.messages,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
                "user": self.user,
                "webhook_url": self.webhook_url,
                "metadata": self.metadata,
                "timeout_s": self.timeout_s,
                "fallbacks": self.fallbacks,
                "use_cache": self.use_cache,
                "degraded_ok": self.degraded_ok,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to make one provider call; plain data, safe to pass between threads."""

    job_id: str
    tenant_id: str
    lease_token: str
    attempt_number: int
    max_attempts: int
    model: str
    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float | None
    user: str | None
    deadline_at: datetime | None
    requested_model: str = ""
    current_model: str | None = None
    model_attempts: int = 1
    fallbacks: list[str] | None = None
    use_cache: bool | None = None
    degraded_ok: bool = False
    worker: str | None = None
    # The rest of the job as the claim left it, so a completion can state the job's public view
    # (its webhook payload) without reading the row again.
    route_reason: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, str] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    attempt_opened: bool = False  # the claim also wrote the attempt row (Postgres)


@dataclass(frozen=True)
class SendNow:
    """The caller sends the first attempt of a job's webhook itself, right after the commit: the
    event is claimed for ``hold_s`` (past that, the sweeper hands it to the webhooks queue)."""

    hold_s: float
    # A tenant's webhook secret never changes once created, so a process keeps the ones it read.
    secrets: dict[str, str] = field(default_factory=dict)

    def secret(self, session: Session, tenant_id: str) -> str:
        secret = self.secrets.get(tenant_id)
        if secret is None:
            secret = session.scalar(select(TENANTS.c.webhook_secret).where(TENANTS.c.id == tenant_id))
            assert secret is not None
            self.secrets[tenant_id] = secret
        return secret


@dataclass
class TransitionResult:
    """The outcome of a transition: the job as it now is, and webhook events to enqueue."""

    job: Any  # the job after the move (a Job, or a row with its attributes), when read
    applied: bool
    event_ids: list[str] = field(default_factory=list)  # for the webhooks queue
    events: list[EventToSend] = field(default_factory=list)  # claimed for the caller to send now


def compare_and_set(session: Session, statement: Executable) -> bool:
    """Run a guarded UPDATE; True when it changed the one row it targets."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount == 1


# --- submit ---------------------------------------------------------------------------------------


def create_job(
    session: Session,
    *,
    tenant_id: str,
    new: NewJob,
    now: datetime,
    max_attempts: int,
    idempotency_key: str | None = None,
    idempotency_ttl_s: int = 86400,
) -> tuple[Any, bool]:
    """Insert a queued job. Returns ``(job, created)``; ``created`` is False for an idempotent
    replay. ``job`` has a Job's attributes (for :func:`job_public`): a plain record when it was
    just inserted, the stored Job for a replay. The unique constraint on (tenant, key), not a
    read-then-write, settles races."""
    fingerprint = new.fingerprint()
    for _ in range(3):
        values = dict(
            id=new_id("job_"),
            tenant_id=tenant_id,
            status=JobStatus.QUEUED.value,
            model=new.model,
            messages=new.messages,
            max_tokens=new.max_tokens,
            temperature=new.temperature,
            end_user=new.user,
            webhook_url=new.webhook_url,
            metadata_=new.metadata,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            max_attempts=max_attempts,
            deadline_at=now + timedelta(seconds=new.timeout_s) if new.timeout_s else None,
            fallbacks=new.fallbacks,
            use_cache=new.use_cache,
            degraded_ok=new.degraded_ok,
            attempts=0,
            model_attempts=0,
            progress=0.0,
            cached=False,
            degraded=False,
            enqueued_at=now,
            created_at=now,
            updated_at=now,
        )
        if idempotency_key is None:  # the common case: one INSERT, no unit of work
            session.execute(INSERT_JOB, {_COLUMN_OF[key]: v for key, v in values.items()})
            return SimpleNamespace(**{**_UNSET_JOB, **values}), True
        job = Job(**values)
        try:
            with session.begin_nested():
                session.add(job)
        except IntegrityError:
            existing = session.scalars(
                select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key)
            ).first()
            if existing is None:  # deleted between the insert and the read: try again
                continue
            if existing.created_at < now - timedelta(seconds=idempotency_ttl_s):
                existing.idempotency_key = None  # expired: the key is free again
                session.flush()
                continue
            if existing.request_fingerprint != fingerprint:
                raise IdempotencyConflict(existing) from None
            return existing, False
        else:
            return job, True
    raise RuntimeError("could not settle the Idempotency-Key after 3 tries")


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise JobNotFound(job_id)
    return job


def job_exists(session: Session, job_id: str) -> bool:
    return session.scalar(select(JOBS.c.id).where(JOBS.c.id == job_id)) is not None


# --- worker side ----------------------------------------------------------------------------------


# queued → processing, if due and before its deadline (see claim_job)
CLAIM_JOB = (
    update(JOBS)
    .where(
        JOBS.c.id == bindparam("w_id"),
        JOBS.c.status == JobStatus.QUEUED.value,
        (JOBS.c.next_attempt_at.is_(None))
        | (JOBS.c.next_attempt_at <= bindparam("w_due_by", type_=JOBS.c.next_attempt_at.type)),
        (JOBS.c.deadline_at.is_(None))
        | (JOBS.c.deadline_at > bindparam("w_now", type_=JOBS.c.deadline_at.type)),
    )
    .values(
        status=JobStatus.PROCESSING.value,
        attempts=JOBS.c.attempts + 1,
        model_attempts=JOBS.c.model_attempts + 1,
        lease_token=bindparam("v_token", type_=JOBS.c.lease_token.type),
        lease_expires_at=bindparam("v_lease_until", type_=JOBS.c.lease_expires_at.type),
        next_attempt_at=None,
        wait_reason=None,
        started_at=func.coalesce(JOBS.c.started_at, bindparam("v_now", type_=JOBS.c.started_at.type)),
        updated_at=bindparam("v_now", type_=JOBS.c.updated_at.type),
    )
    .returning(
        JOBS.c.tenant_id,
        JOBS.c.attempts,
        JOBS.c.max_attempts,
        JOBS.c.model,
        JOBS.c.current_model,
        JOBS.c.model_attempts,
        JOBS.c.messages,
        JOBS.c.max_tokens,
        JOBS.c.temperature,
        JOBS.c.user.label("end_user"),
        JOBS.c.deadline_at,
        JOBS.c.fallbacks,
        JOBS.c.use_cache,
        JOBS.c.degraded_ok,
        JOBS.c.route_reason,
        JOBS.c.webhook_url,
        JOBS.c["metadata"],
        JOBS.c.created_at,
        JOBS.c.started_at,
    )
)


# On Postgres the claim also opens the attempt row, for the model the job is on, in the same
# statement: one round trip less on every job. record_attempt corrects the row when the gate
# picks another model, park_job removes it.
_CLAIMED = CLAIM_JOB.returning(JOBS.c.id.label("claimed_id")).cte("claimed")
_ATTEMPT_MODEL = func.coalesce(func.nullif(_CLAIMED.c.current_model, ""), _CLAIMED.c.model)
_OPEN_ATTEMPT = insert(ATTEMPTS).from_select(
    ["job_id", "number", "provider", "model", "worker", "started_at", "outcome"],
    select(
        _CLAIMED.c.claimed_id,
        _CLAIMED.c.attempts,
        func.split_part(_ATTEMPT_MODEL, "/", 1),
        _ATTEMPT_MODEL,
        bindparam("a_worker", type_=ATTEMPTS.c.worker.type),
        bindparam("v_now", type_=ATTEMPTS.c.started_at.type),
        literal(AttemptOutcome.RUNNING.value, type_=ATTEMPTS.c.outcome.type),
    ),
)
CLAIM_AND_OPEN_ATTEMPT = select(*(c for c in _CLAIMED.c if c.key != "claimed_id")).add_cte(
    _OPEN_ATTEMPT.cte("opened")
)


def claim_job(
    session: Session,
    job_id: str,
    *,
    lease_token: str,
    lease_s: float,
    worker: str | None,
    now: datetime,
    early_s: float = 0.5,
) -> ClaimedJob | None:
    """``queued → processing`` for one attempt, if the job is queued and due. ``None`` otherwise
    (already running elsewhere, ended, cancelled, or a retry that is not due yet).

    The attempt is counted here; the caller then either records it with :func:`record_attempt`
    (the call goes ahead, in the same transaction) or takes it back with :func:`park_job`."""
    opens_attempt = on_postgres(session)
    row = session.execute(
        CLAIM_AND_OPEN_ATTEMPT if opens_attempt else CLAIM_JOB,
        {
            "w_id": job_id,
            "w_due_by": now + timedelta(seconds=early_s),
            "w_now": now,
            "v_token": lease_token,
            "v_lease_until": now + timedelta(seconds=lease_s),
            "v_now": now,
            "a_worker": worker,
        },
    ).first()
    if row is None:
        return None
    return ClaimedJob(
        job_id=job_id,
        tenant_id=row.tenant_id,
        lease_token=lease_token,
        attempt_number=row.attempts,
        max_attempts=row.max_attempts,
        model=row.current_model or row.model,
        messages=row.messages,
        max_tokens=row.max_tokens,
        temperature=row.temperature,
        user=row.end_user,
        deadline_at=row.deadline_at,
        requested_model=row.model,
        current_model=row.current_model,
        model_attempts=row.model_attempts,
        fallbacks=row.fallbacks,
        use_cache=row.use_cache,
        degraded_ok=bool(row.degraded_ok),
        worker=worker,
        route_reason=row.route_reason,
        webhook_url=row.webhook_url,
        metadata=row.metadata,  # the column, not the attribute (metadata_)
        created_at=row.created_at,
        started_at=row.started_at,
        attempt_opened=opens_attempt,
    )


def record_attempt(
    session: Session,
    claim: ClaimedJob,
    *,
    model: str,
    now: datetime,
    route_reason: str | None = None,
    outcome: AttemptOutcome = AttemptOutcome.RUNNING,
) -> ClaimedJob:
    """Write the attempt row for the call about to be made with ``model`` (which a breaker or the
    router may have changed: the job then remembers it as its current model)."""
    if model != claim.model or route_reason is not None:
        values: dict[str, Any] = {"current_model": model}
        if model != claim.model:
            values["model_attempts"] = 1
        if route_reason is not None:
            values["route_reason"] = route_reason
        session.execute(update(Job).where(Job.id == claim.job_id).values(**values))
    attempt: dict[str, Any] = {
        "provider": model.split("/", 1)[0],
        "model": model,
        "outcome": outcome.value,
        "ended_at": None if outcome is AttemptOutcome.RUNNING else now,
    }
    if not claim.attempt_opened:
        attempt.update(job_id=claim.job_id, number=claim.attempt_number, worker=claim.worker, started_at=now)
        session.execute(INSERT_ATTEMPT, attempt)
    elif model != claim.model or outcome is not AttemptOutcome.RUNNING:  # else the claim wrote it
        params = {"w_job_id": claim.job_id, "w_number": claim.attempt_number}
        session.execute(_update_attempt(tuple(attempt)), params | {f"v_{k}": v for k, v in attempt.items()})
    model_attempts = 1 if model != claim.model else claim.model_attempts
    return replace(
        claim,
        model=model,
        current_model=model,
        model_attempts=model_attempts,
        route_reason=route_reason if route_reason is not None else claim.route_reason,
    )


def park_job(
    session: Session, claim: ClaimedJob, *, now: datetime, until: datetime, reason: str, enqueued: bool
) -> None:
    """Give the claim back without calling anyone: no capacity now (rate limit, open breaker).
    The job waits in the database with ``next_attempt_at``; the attempt is not counted."""
    if claim.attempt_opened:
        session.execute(
            delete(ATTEMPTS).where(
                ATTEMPTS.c.job_id == claim.job_id, ATTEMPTS.c.number == claim.attempt_number
            )
        )
    session.execute(
        update(JOBS)
        .where(_holds_lease(claim))
        .values(
            status=JobStatus.QUEUED.value,
            attempts=JOBS.c.attempts - 1,
            model_attempts=JOBS.c.model_attempts - 1,
            lease_token=None,
            lease_expires_at=None,
            next_attempt_at=until,
            wait_reason=reason,
            enqueued_at=now if enqueued else None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class CallResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    served_by: str | None
    cost_usd: Decimal | None
    latency_ms: int
    cached: bool = False
    degraded: bool = False
    http_status: int | None = 200


@dataclass(frozen=True)
class CallFailure:
    error_type: str
    message: str
    http_status: int | None
    retry_after_s: float | None
    latency_ms: int
    retryable: bool


def _finish_attempt(session: Session, claim: ClaimedJob, now: datetime, **values: Any) -> None:
    values["ended_at"] = now
    params = {"w_job_id": claim.job_id, "w_number": claim.attempt_number}
    session.execute(_update_attempt(tuple(values)), params | {f"v_{k}": v for k, v in values.items()})


def _holds_lease(claim: ClaimedJob) -> Any:
    return (
        (JOBS.c.id == claim.job_id)
        & (JOBS.c.status == JobStatus.PROCESSING.value)
        & (JOBS.c.lease_token == claim.lease_token)
    )


def complete_job(
    session: Session,
    claim: ClaimedJob,
    result: CallResult,
    now: datetime,
    *,
    send_now: SendNow | None = None,
) -> TransitionResult:
    """``processing → completed`` if this worker still holds the job; else the result is discarded."""
    values = {
        "status": JobStatus.COMPLETED.value,
        "result_text": result.text,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "cost_usd": result.cost_usd,
        "served_by": result.served_by,
        "cached": result.cached,
        "degraded": result.degraded,
        "progress": 1.0,
        "partial_text": None,
        "error_type": None,
        "error_message": None,
        "lease_token": None,
        "lease_expires_at": None,
        "completed_at": now,
        "updated_at": now,
    }
    job = session.execute(_update_held_job(tuple(values), True), _held_params(claim, values)).first()
    applied = job is not None
    _finish_attempt(
        session,
        claim,
        now,
        outcome=(_success_outcome(result) if applied else AttemptOutcome.DISCARDED).value,
        http_status=result.http_status,
        latency_ms=result.latency_ms,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
    )
    if job is None:
        return TransitionResult(job=None, applied=False)
    return _ended(session, claim.job_id, JobStatus.COMPLETED, now, job, send_now=send_now)


@dataclass(frozen=True)
class Completion:
    """A successful call to record with :func:`complete_jobs`."""

    claim: ClaimedJob
    result: CallResult


def _complete_from_arrays() -> TextClause:
    """One statement completes a whole batch: the jobs still held move to ``completed``; every
    attempt of the batch is closed, as ``discarded`` when its job was not held any more
    (cancelled, or its lease taken over); the completed jobs' webhook events are written."""
    return text(
        f"""
    WITH input AS (
        SELECT * FROM unnest(
            CAST(:id AS text[]), CAST(:token AS text[]), CAST(:number AS integer[]),
            CAST(:result_text AS text[]), CAST(:finish_reason AS text[]),
            CAST(:prompt_tokens AS integer[]), CAST(:completion_tokens AS integer[]),
            CAST(:cost_usd AS numeric[]), CAST(:served_by AS text[]), CAST(:cached AS boolean[]),
            CAST(:degraded AS boolean[]), CAST(:outcome AS text[]), CAST(:http_status AS integer[]),
            CAST(:latency_ms AS integer[]), CAST(:tenant_id AS text[]), CAST(:event_id AS text[]),
            CAST(:url AS text[]), CAST(:payload AS text[])
        ) AS t(id, token, number, result_text, finish_reason, prompt_tokens, completion_tokens,
               cost_usd, served_by, cached, degraded, outcome, http_status, latency_ms, tenant_id,
               event_id, url, payload)
    ), done AS (
        UPDATE {JOBS.name} AS jobs SET status = '{JobStatus.COMPLETED.value}',
            result_text = input.result_text, finish_reason = input.finish_reason,
            prompt_tokens = input.prompt_tokens, completion_tokens = input.completion_tokens,
            total_tokens = input.prompt_tokens + input.completion_tokens,
            cost_usd = input.cost_usd, served_by = input.served_by, cached = input.cached,
            degraded = input.degraded, progress = 1.0, partial_text = NULL, error_type = NULL,
            error_message = NULL, lease_token = NULL, lease_expires_at = NULL,
            completed_at = :now, updated_at = :now
        FROM input
        WHERE jobs.id = input.id AND jobs.status = '{JobStatus.PROCESSING.value}'
            AND jobs.lease_token = input.token
        RETURNING jobs.id
    ), closed AS (
        UPDATE {ATTEMPTS.name} AS attempts SET
            outcome = CASE WHEN done.id IS NULL THEN '{AttemptOutcome.DISCARDED.value}'
                           ELSE input.outcome END,
            ended_at = :now, http_status = input.http_status, latency_ms = input.latency_ms,
            prompt_tokens = input.prompt_tokens, completion_tokens = input.completion_tokens
        FROM input LEFT JOIN done ON done.id = input.id
        WHERE attempts.job_id = input.id AND attempts.number = input.number
    ), announced AS (
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


def completed_view(claim: ClaimedJob, result: CallResult, now: datetime) -> SimpleNamespace:
    """The job as :func:`complete_job` leaves it, from the claim and the result: what
    ``job_public`` (the status and the webhook payload) needs, without reading the row back."""
    cost = result.cost_usd
    if cost is not None:  # as the numeric(18, 8) column will hold it
        cost = cost.quantize(_COST_STEP, rounding=ROUND_HALF_UP)
    return SimpleNamespace(
        **{
            **_UNSET_JOB,
            "id": claim.job_id,
            "tenant_id": claim.tenant_id,
            "status": JobStatus.COMPLETED.value,
            "model": claim.requested_model,
            "current_model": claim.current_model,
            "served_by": result.served_by,
            "route_reason": claim.route_reason,
            "created_at": claim.created_at,
            "started_at": claim.started_at,
            "completed_at": now,
            "updated_at": now,
            "attempts": claim.attempt_number,
            "progress": 1.0,
            "result_text": result.text,
            "finish_reason": result.finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
            "cost_usd": cost,
            "metadata_": claim.metadata,
            "webhook_url": claim.webhook_url,
            "cached": result.cached,
            "degraded": result.degraded,
            "fallbacks": claim.fallbacks,
        },
    )


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
            "result_text": c.result.text,
            "finish_reason": c.result.finish_reason,
            "prompt_tokens": c.result.prompt_tokens,
            "completion_tokens": c.result.completion_tokens,
            "cost_usd": view.cost_usd,
            "served_by": c.result.served_by,
            "cached": c.result.cached,
            "degraded": c.result.degraded,
            "outcome": _success_outcome(c.result).value,
            "http_status": c.result.http_status,
            "latency_ms": c.result.latency_ms,
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
    when a fallback is taken), or fail it."""
    outcome = AttemptOutcome.RETRYABLE_ERROR if failure.retryable else AttemptOutcome.PERMANENT_ERROR
    common = {"lease_token": None, "lease_expires_at": None, "updated_at": now}
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
        values = _final_values(JobStatus.FAILED, failure.error_type, failure.message, now)
    applied = compare_and_set(
        session,
        update(JOBS).where(_holds_lease(claim)).values(**values).execution_options(synchronize_session=False),
    )
    _finish_attempt(
        session,
        claim,
        now,
        outcome=(outcome if applied else AttemptOutcome.DISCARDED).value,
        error_type=failure.error_type,
        error_message=failure.message[:2000],
        http_status=failure.http_status,
        retry_after_s=failure.retry_after_s,
        latency_ms=failure.latency_ms,
    )
    if not applied:
        return TransitionResult(job=None, applied=False)
    if retry_at is not None:
        return TransitionResult(job=None, applied=True)
    return _ended(session, claim.job_id, JobStatus.FAILED, now, send_now=send_now)


def hand_back(session: Session, claim: ClaimedJob, now: datetime) -> bool:
    """``processing → queued`` at once: the worker is shutting down (a deploy) mid-call."""
    applied = compare_and_set(
        session,
        update(JOBS)
        .where(_holds_lease(claim))
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


def expire_overdue(
    session: Session, job_id: str, now: datetime, *, send_now: SendNow | None = None
) -> TransitionResult:
    """``queued → failed`` with a ``timeout`` error when the job's deadline has passed."""
    applied = compare_and_set(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value, Job.deadline_at <= now)
        .values(
            **_final_values(
                JobStatus.FAILED, "timeout", "the job's deadline passed before it could complete", now
            )
        )
        .execution_options(synchronize_session=False),
    )
    if not applied:
        return TransitionResult(job=None, applied=False)
    return _ended(session, job_id, JobStatus.FAILED, now, send_now=send_now)


def recover_expired_lease(
    session: Session, *, job_id: str, lease_token: str, attempts: int, max_attempts: int, now: datetime
) -> TransitionResult:
    """The worker holding this lease stopped renewing it (killed, host lost): record the attempt as
    lost and put the job back to ``queued`` — or fail it when no attempt is left. A late answer
    from that worker is then discarded by the lease-token compare-and-set."""
    error = ("worker_lost", "the worker running this attempt stopped answering")
    exhausted = attempts >= max_attempts
    values = (
        _final_values(JobStatus.FAILED, *error, now)
        if exhausted
        else {
            "status": JobStatus.QUEUED.value,
            "error_type": error[0],
            "error_message": error[1],
            "lease_token": None,
            "lease_expires_at": None,
            "next_attempt_at": now,
            "enqueued_at": now,
            "updated_at": now,
        }
    )
    applied = compare_and_set(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.PROCESSING.value, Job.lease_token == lease_token)
        .values(**values)
        .execution_options(synchronize_session=False),
    )
    if not applied:
        return TransitionResult(job=None, applied=False)
    session.execute(
        update(Attempt)
        .where(Attempt.job_id == job_id, Attempt.number == attempts, Attempt.ended_at.is_(None))
        .values(outcome=AttemptOutcome.LOST.value, ended_at=now, error_type=error[0])
    )
    if exhausted:
        return _ended(session, job_id, JobStatus.FAILED, now)
    return TransitionResult(job=None, applied=True)


# --- API side -------------------------------------------------------------------------------------


def cancel_job(session: Session, *, tenant_id: str, job_id: str, now: datetime) -> TransitionResult:
    """``queued|processing → cancelled``. A worker still calling the provider loses its lease, so
    its answer, when it comes, is discarded by the compare-and-set in :func:`complete_job`."""
    applied = compare_and_set(
        session,
        update(Job)
        .where(
            Job.id == job_id,
            Job.tenant_id == tenant_id,
            Job.status.in_([s.value for s in ACTIVE_STATUSES]),
        )
        .values(**_final_values(JobStatus.CANCELLED, "cancelled", "cancelled by request", now))
        .execution_options(synchronize_session=False),
    )
    if not applied:
        job = get_job(session, tenant_id, job_id)  # raises JobNotFound
        raise JobAlreadyEnded(job)
    return _ended(session, job_id, JobStatus.CANCELLED, now)


def _final_values(status: JobStatus, error_type: str, message: str, now: datetime) -> dict[str, Any]:
    """The columns every move to a final state without a result sets: the error, no lease, no
    pending wait."""
    return {
        "status": status.value,
        "error_type": error_type,
        "error_message": message,
        "lease_token": None,
        "lease_expires_at": None,
        "next_attempt_at": None,
        "wait_reason": None,
        "completed_at": now,
        "updated_at": now,
    }


def _ended(
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
    session: Session, ended: TransitionResult, event: dict[str, Any], send_now: SendNow | None
) -> None:
    """List a written event in the result: for the webhooks queue, or claimed for the caller."""
    if send_now is None:
        ended.event_ids.append(event["id"])
    else:
        secret = send_now.secret(session, event["tenant_id"])
        ended.events.append(EventToSend(event["id"], event["url"], event["payload"], secret, attempt=1))
