"""The sweeper's side of the state machine: jobs the broker lost, deadlines passed, workers lost.

The sweeper (``llmq.tasks.sweep``) only decides when to look; the queries that find such jobs and
the transitions that put them right live here, next to the other transitions they must agree
with (a recovered lease is guarded by the same lease token a late worker's completion is).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Row, select, update
from sqlalchemy.orm import Session

from llmq.models.finish import ended
from llmq.models.records import SendNow, TransitionResult
from llmq.models.state import AttemptOutcome, JobStatus
from llmq.models.statements import compare_and_set, final_values
from llmq.models.tables import Attempt, Job


def expire_overdue(
    session: Session, job_id: str, now: datetime, *, send_now: SendNow | None = None
) -> TransitionResult:
    """``queued → failed`` with a ``timeout`` error when the job's deadline has passed."""
    applied = compare_and_set(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value, Job.deadline_at <= now)
        .values(
            **final_values(
                JobStatus.FAILED, "timeout", "the job's deadline passed before it could complete", now
            )
        )
        .execution_options(synchronize_session=False),
    )
    if not applied:
        return TransitionResult(job=None, applied=False)
    return ended(session, job_id, JobStatus.FAILED, now, send_now=send_now)


def recover_expired_lease(
    session: Session, *, job_id: str, lease_token: str, attempts: int, max_attempts: int, now: datetime
) -> TransitionResult:
    """The worker holding this lease stopped renewing it (killed, host lost): record the attempt as
    lost and put the job back to ``queued`` — or fail it when no attempt is left. A late answer
    from that worker is then discarded by the lease-token compare-and-set."""
    error = ("worker_lost", "the worker running this attempt stopped answering")
    exhausted = attempts >= max_attempts
    values = (
        final_values(JobStatus.FAILED, *error, now)
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
        return ended(session, job_id, JobStatus.FAILED, now)
    return TransitionResult(job=None, applied=True)


_QUEUED = Job.status == JobStatus.QUEUED.value


def jobs_to_resend(
    session: Session, *, now: datetime, sent_before: datetime, requeue_after: timedelta, limit: int
) -> list[str]:
    """The queued jobs the broker should carry and does not, marked sent now (``enqueued_at``) in
    the caller's transaction; the caller sends them after the commit. ``limit`` applies to each
    of the two kinds:

    - never enqueued (the broker was down at submit) or parked for a long wait whose time has
      come: ``enqueued_at`` is null and they are due;
    - sent before ``sent_before`` (how far the broker's line has come, less ``requeue_after``)
      and due more than ``requeue_after`` ago, yet still queued: their message was lost."""
    due = list(
        session.scalars(
            select(Job.id)
            .where(
                _QUEUED,
                Job.enqueued_at.is_(None),
                Job.next_attempt_at.is_(None) | (Job.next_attempt_at <= now),
            )
            .order_by(Job.next_attempt_at)
            .limit(limit)
        )
    )
    due += session.scalars(
        select(Job.id)
        .where(
            _QUEUED,
            Job.enqueued_at < sent_before,
            Job.next_attempt_at.is_(None) | (Job.next_attempt_at < now - requeue_after),
        )
        .order_by(Job.enqueued_at)
        .limit(limit)
    )
    if due:
        session.execute(
            update(Job)
            .where(Job.id.in_(due))
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
    return due


def overdue_jobs(session: Session, *, now: datetime, limit: int) -> list[str]:
    """Queued jobs past their deadline, the most overdue first (for :func:`expire_overdue`)."""
    return list(
        session.scalars(
            select(Job.id).where(_QUEUED, Job.deadline_at < now).order_by(Job.deadline_at).limit(limit)
        )
    )


def expired_leases(
    session: Session, *, now: datetime, limit: int
) -> Sequence[Row[str, str | None, int, int]]:
    """Jobs in ``processing`` whose lease expired, as ``(id, lease_token, attempts, max_attempts)``
    rows (for :func:`recover_expired_lease`)."""
    return session.execute(
        select(Job.id, Job.lease_token, Job.attempts, Job.max_attempts)
        .where(Job.status == JobStatus.PROCESSING.value, Job.lease_expires_at < now)
        .limit(limit)
    ).all()
