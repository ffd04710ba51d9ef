"""A worker's hold on a job: the claim that starts an attempt, and what it does with the claim.

``claim_job`` moves a job from ``queued`` to ``processing`` under a lease token; the worker then
records the attempt it makes (``record_attempt``), gives the claim back unused (``park_job``), and
keeps its leases alive while the calls run (``renew_leases``). How a claim ends is in
``finish.py``; what happens to a claim whose worker died is in ``recovery.py``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, literal, select, tuple_, update
from sqlalchemy.orm import Session

from llmq.models.db import on_postgres
from llmq.models.records import CLAIMED_COLUMNS, ClaimedJob
from llmq.models.state import AttemptOutcome, JobStatus
from llmq.models.statements import ATTEMPTS, INSERT_ATTEMPT, JOBS, holds_lease, update_attempt
from llmq.models.tables import Job

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
    # Every column a ClaimedJob is built from, labelled with its field (see CLAIMED_COLUMNS).
    .returning(*(JOBS.c[column].label(name) for name, column in CLAIMED_COLUMNS.items()))
)


# On Postgres the claim also opens the attempt row, for the model the job is on, in the same
# statement: one round trip less on every job. record_attempt corrects the row when the gate
# picks another model, park_job removes it.
_CLAIMED = CLAIM_JOB.returning(JOBS.c.id.label("claimed_id")).cte("claimed")
_ATTEMPT_MODEL = func.coalesce(func.nullif(_CLAIMED.c.current_model, ""), _CLAIMED.c.requested_model)
_OPEN_ATTEMPT = insert(ATTEMPTS).from_select(
    ["job_id", "number", "provider", "model", "worker", "started_at", "outcome"],
    select(
        _CLAIMED.c.claimed_id,
        _CLAIMED.c.attempt_number,
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
    claimed = row._asdict()  # the fields of CLAIMED_COLUMNS
    return ClaimedJob(
        job_id=job_id,
        lease_token=lease_token,
        model=claimed["current_model"] or claimed["requested_model"],
        worker=worker,
        attempt_opened=opens_attempt,
        **claimed,
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
        session.execute(update_attempt(tuple(attempt)), params | {f"v_{k}": v for k, v in attempt.items()})
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
        .where(holds_lease(claim.job_id, claim.lease_token))
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


def renew_leases(session: Session, leases: list[tuple[str, str]], *, until: datetime) -> set[str]:
    """Push to ``until`` the lease of every ``(job id, lease token)`` still held, in one UPDATE.
    Returns the ids renewed: a job missing from them was cancelled or taken over."""
    return set(
        session.scalars(
            update(Job)
            .where(
                Job.status == JobStatus.PROCESSING.value,
                tuple_(Job.id, Job.lease_token).in_(leases),
            )
            .values(lease_expires_at=until)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
    )
