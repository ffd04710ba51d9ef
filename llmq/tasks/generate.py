"""``llmq.generate(job_id)``: claim the job, call the provider, record the outcome.

Three short transactions and no session or lock held across the provider call:
claim (``queued → processing``, attempt row) · call · complete, retry or fail (compare-and-set
on the lease token, so a cancelled or taken-over job discards a late answer).
"""

from __future__ import annotations

import secrets
from datetime import timedelta

import structlog
from celery import Task

from llmq.models.base import utcnow
from llmq.models.transitions import (
    ClaimedJob,
    claim_job,
    complete_job,
    discard_attempt,
    expire_overdue,
    fail_attempt,
    hand_back,
)
from llmq.tasks.app import celery_app
from llmq.tasks.enqueue import enqueue_job, enqueue_webhook
from llmq.workers.call import call_provider
from llmq.workers.runtime import WorkerRuntime, get_runtime

logger = structlog.get_logger(__name__)


def execute_job(rt: WorkerRuntime, job_id: str) -> str:
    """Run one attempt of a job. Returns what happened, for logs and tests."""
    now = utcnow()
    lease_s = rt.settings.provider_timeout_s + rt.settings.lease_s
    with rt.db.transaction() as session:
        claim = claim_job(
            session,
            job_id,
            lease_token=secrets.token_hex(8),
            lease_s=lease_s,
            worker=rt.worker_name,
            now=now,
        )
    if claim is None:
        with rt.db.transaction() as session:
            expired = expire_overdue(session, job_id, now)
        if expired.applied:
            for event_id in expired.event_ids:
                enqueue_webhook(event_id)
            logger.info("job_deadline_passed", job_id=job_id)
            return "failed"
        logger.info("job_claim_skipped", job_id=job_id)
        return "skipped"
    structlog.contextvars.bind_contextvars(job_id=job_id)
    try:
        logger.info("job_attempt_started", attempt=claim.attempt_number, model=claim.model)
        outcome = call_provider(rt, claim, now)
        done = utcnow()
        if outcome.interrupted:
            return _interrupted(rt, claim, outcome.latency_ms)
        with rt.db.transaction() as session:
            if outcome.result is not None:
                transition = complete_job(session, claim, outcome.result, done)
                what = "completed"
            else:
                assert outcome.failure is not None
                retry_at = (
                    done + timedelta(seconds=outcome.retry_in_s) if outcome.retry_in_s is not None else None
                )
                wait_reason = None
                if retry_at is not None:
                    wait_reason = (
                        "rate_limited" if outcome.failure.error_type == "rate_limit" else "retry_backoff"
                    )
                transition = fail_attempt(
                    session,
                    claim,
                    outcome.failure,
                    done,
                    retry_at=retry_at,
                    wait_reason=wait_reason,
                    enqueued=_by_countdown(rt, outcome.retry_in_s),
                )
                what = "retry" if retry_at is not None else "failed"
        if not transition.applied:
            logger.info("job_result_discarded", attempt=claim.attempt_number)
            return "discarded"
        for event_id in transition.event_ids:
            enqueue_webhook(event_id)
        if what == "retry":
            assert outcome.retry_in_s is not None
            if _by_countdown(rt, outcome.retry_in_s):
                enqueue_job(job_id, countdown=outcome.retry_in_s)
            # Longer waits stay parked in the database; the sweeper enqueues them when due.
        logger.info(
            "job_attempt_finished",
            outcome=what,
            attempt=claim.attempt_number,
            retry_in_s=outcome.retry_in_s,
        )
        return what
    finally:
        structlog.contextvars.unbind_contextvars("job_id")


def _interrupted(rt: WorkerRuntime, claim: ClaimedJob, latency_ms: int) -> str:
    """The call was stopped: hand the job back if we are shutting down, else it was cancelled or
    taken over and the attempt is only recorded as discarded."""
    now = utcnow()
    with rt.db.transaction() as session:
        if rt.inflight.shutting_down:
            handed_back = hand_back(session, claim, now)
        else:
            discard_attempt(session, claim, now, latency_ms)
            handed_back = False
    if handed_back:
        enqueue_job(claim.job_id)
        logger.info("job_handed_back", attempt=claim.attempt_number)
        return "handed_back"
    logger.info("job_call_stopped", attempt=claim.attempt_number)
    return "discarded"


def _by_countdown(rt: WorkerRuntime, delay_s: float | None) -> bool:
    """Short waits ride a broker countdown; long ones park in the database (a Celery ETA longer
    than the visibility timeout would be redelivered over and over on Redis)."""
    return delay_s is not None and delay_s <= rt.settings.max_countdown_s


@celery_app.task(
    name="llmq.generate",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def generate(self: Task, job_id: str) -> str:
    return execute_job(get_runtime(), job_id)
