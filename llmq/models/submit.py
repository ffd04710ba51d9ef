"""The API's side of the state machine: a job submitted, read, listed, cancelled.

What the API (and the CLI) write and read about jobs lives here rather than in the views, so the
views hold no SQL and a rule (a tenant sees only its own jobs, a cancel races a worker safely)
is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llmq.models.base import new_id
from llmq.models.finish import ended
from llmq.models.records import (
    NEW_JOB_COLUMNS,
    IdempotencyConflict,
    JobAlreadyEnded,
    JobNotFound,
    NewJob,
    TransitionResult,
)
from llmq.models.state import ACTIVE_STATUSES, JobStatus
from llmq.models.statements import (
    ATTRIBUTE_OF,
    COLUMN_OF,
    INSERT_JOB,
    JOBS,
    NEW_JOB_DEFAULTS,
    UNSET_JOB,
    compare_and_set,
    final_values,
)
from llmq.models.tables import Attempt, Job


def create_job(
    session: Session,
    *,
    tenant_id: str,
    new: NewJob,
    now: datetime,
    max_attempts: int,
    idempotency_key: str | None = None,
    idempotency_ttl_s: int = 86400,
    api_key_id: str | None = None,
    request_id: str | None = None,
    traceparent: str | None = None,
) -> tuple[Any, bool]:
    """Insert a queued job. Returns ``(job, created)``; ``created`` is False for an idempotent
    replay. ``job`` has a Job's attributes (for :func:`job_public`): a plain record when it was
    just inserted, the stored Job for a replay. The unique constraint on (tenant, key), not a
    read-then-write, settles races. The values are derived rather than listed
    (:func:`_new_job_values`)."""
    fingerprint = new.fingerprint()
    for _ in range(3):
        values = _new_job_values(
            tenant_id=tenant_id,
            new=new,
            now=now,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            api_key_id=api_key_id,
            request_id=request_id,
            traceparent=traceparent,
        )
        if idempotency_key is None:  # the common case: one INSERT, no unit of work
            session.execute(INSERT_JOB, {COLUMN_OF[key]: v for key, v in values.items()})
            return SimpleNamespace(**{**UNSET_JOB, **values}), True
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


def _new_job_values(
    *,
    tenant_id: str,
    new: NewJob,
    now: datetime,
    max_attempts: int,
    idempotency_key: str | None,
    fingerprint: str,
    api_key_id: str | None,
    request_id: str | None,
    traceparent: str | None,
) -> dict[str, Any]:
    """A new job's every attribute: the table's defaults (``NEW_JOB_DEFAULTS``), the fields of
    NewJob that are columns (``NEW_JOB_COLUMNS``), then what only the submit knows."""
    return {
        **NEW_JOB_DEFAULTS,  # the table's: queued, counters at zero, flags off
        **{ATTRIBUTE_OF[column]: getattr(new, column) for column in NEW_JOB_COLUMNS},
        "id": new_id("job_"),
        "tenant_id": tenant_id,
        "api_key_id": api_key_id,
        "request_id": request_id,
        "traceparent": traceparent,
        "idempotency_key": idempotency_key,
        "request_fingerprint": fingerprint,
        "max_attempts": max_attempts,
        "deadline_at": now + timedelta(seconds=new.timeout_s) if new.timeout_s else None,
        "enqueued_at": now,
        "created_at": now,
        "updated_at": now,
    }


def create_jobs(
    session: Session,
    *,
    tenant_id: str,
    jobs: list[tuple[NewJob, str]],
    now: datetime,
    max_attempts: int,
    api_key_id: str | None = None,
    request_id: str | None = None,
) -> dict[str, str]:
    """:func:`create_job` for many jobs with their Idempotency-Keys, in one INSERT (a batch's
    chunk of lines). Returns ``{key: new job id}``; a key already taken (by an earlier job, or
    earlier in ``jobs``) makes no job. The stored keys are read in one query on the (tenant, key)
    unique index, which still settles any race (the INSERT fails, the transaction with it)."""
    keys = [key for _, key in jobs]
    taken = set(
        session.scalars(
            select(JOBS.c.idempotency_key).where(
                JOBS.c.tenant_id == tenant_id, JOBS.c.idempotency_key.in_(keys)
            )
        )
    )
    rows: list[dict[str, Any]] = []
    for new, key in jobs:
        if key in taken:
            continue
        taken.add(key)
        values = _new_job_values(
            tenant_id=tenant_id,
            new=new,
            now=now,
            max_attempts=max_attempts,
            idempotency_key=key,
            fingerprint=new.fingerprint(),
            api_key_id=api_key_id,
            request_id=request_id,
            traceparent=None,
        )
        rows.append({COLUMN_OF[name]: value for name, value in values.items()})
    if rows:
        session.execute(INSERT_JOB, rows)
    return {row["idempotency_key"]: row["id"] for row in rows}


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise JobNotFound(job_id)
    return job


def job_exists(session: Session, job_id: str) -> bool:
    return session.scalar(select(JOBS.c.id).where(JOBS.c.id == job_id)) is not None


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
        .values(**final_values(JobStatus.CANCELLED, "cancelled", "cancelled by request", now))
        .execution_options(synchronize_session=False),
    )
    if not applied:
        job = get_job(session, tenant_id, job_id)  # raises JobNotFound
        raise JobAlreadyEnded(job)
    return ended(session, job_id, JobStatus.CANCELLED, now)


def mark_not_enqueued(session: Session, job_id: str) -> None:
    """The broker did not take the job's message at submit: leave it to the sweeper to send."""
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=None))


def list_jobs(
    session: Session,
    *,
    tenant_id: str | None,
    status: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> tuple[list[Job], bool]:
    """A page of the tenant's jobs, newest first: at most ``limit`` after the cursor ``after``
    (the ``(created_at, id)`` of the last job of the previous page), and whether more follow.
    ``tenant_id`` None: every tenant's (the admin's view in /ui)."""
    stmt = select(Job)
    if tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == tenant_id)
    if status:
        stmt = stmt.where(Job.status == status)
    if after:
        created_at, last_id = after
        stmt = stmt.where(
            (Job.created_at < created_at) | ((Job.created_at == created_at) & (Job.id < last_id))
        )
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    jobs = list(session.scalars(stmt))
    return jobs[:limit], len(jobs) > limit


def attempts_of(session: Session, job_id: str) -> Sequence[Attempt]:
    """Every attempt of a job, in order."""
    return session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)).all()
