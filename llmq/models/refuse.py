"""A claimed job failed before any call: the gate refused it for good (its budget has no room
for the call). No provider saw it, so no attempt is counted: the attempt row the claim opened is
removed, as when a job is parked, and the job ends ``failed`` with its webhook event, in the
claim's own transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from llmq.models.finish import ended
from llmq.models.records import ClaimedJob, SendNow, TransitionResult
from llmq.models.state import JobStatus
from llmq.models.statements import ATTEMPTS, JOBS, compare_and_set, final_values, holds_lease


def refuse_job(
    session: Session,
    claim: ClaimedJob,
    error_type: str,
    message: str,
    now: datetime,
    *,
    send_now: SendNow | None = None,
) -> TransitionResult:
    """``processing → failed`` with ``error_type``, if this worker still holds the job."""
    if claim.attempt_opened:
        session.execute(
            delete(ATTEMPTS).where(
                ATTEMPTS.c.job_id == claim.job_id, ATTEMPTS.c.number == claim.attempt_number
            )
        )
    applied = compare_and_set(
        session,
        update(JOBS)
        .where(holds_lease(claim.job_id, claim.lease_token))
        .values(
            attempts=JOBS.c.attempts - 1,
            model_attempts=JOBS.c.model_attempts - 1,
            **final_values(JobStatus.FAILED, error_type, message, now),
        )
        .execution_options(synchronize_session=False),
    )
    if not applied:
        return TransitionResult(job=None, applied=False)
    return ended(session, claim.job_id, JobStatus.FAILED, now, send_now=send_now)
