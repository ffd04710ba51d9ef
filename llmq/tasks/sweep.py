"""``llmq.sweep``, run by Celery beat every ``LLMQ_SWEEP_INTERVAL_S``: the database's view of what
should be on the broker, put back where it is missing.

- queued jobs never enqueued (the broker was down at submit) or parked for a long wait whose
  time has come (``enqueued_at`` is null);
- queued jobs whose message was enqueued more than ``LLMQ_REQUEUE_AFTER_S`` ago and never started
  (Redis restarted empty, a countdown lost): enqueued again — a duplicate message is harmless,
  the claim is a compare-and-set;
- queued jobs past their deadline: failed with a ``timeout`` error;
- jobs in ``processing`` whose lease expired (their worker died): back to ``queued``, the lost
  attempt recorded, or failed when no attempt is left;
- webhook events due for an attempt that no broker message is carrying.

A Redis lock keeps it to one sweep at a time, however many beats run.
"""

from __future__ import annotations

from datetime import timedelta

import redis
import structlog
from sqlalchemy import select, update

from llmq.models.base import utcnow
from llmq.models.state import JobStatus
from llmq.models.tables import Job
from llmq.models.transitions import expire_overdue, recover_expired_lease
from llmq.models.webhook_events import due_events
from llmq.tasks.app import celery_app
from llmq.tasks.enqueue import enqueue_job, enqueue_webhook
from llmq.workers.runtime import WorkerRuntime, get_runtime

logger = structlog.get_logger(__name__)

EVENT_GRACE_S = 30.0
BATCH = 500


def sweep(rt: WorkerRuntime) -> dict[str, int]:
    now = utcnow()
    counts = {"enqueued": 0, "leases_recovered": 0, "deadlines_passed": 0, "webhooks_enqueued": 0}
    stale = now - timedelta(seconds=rt.settings.requeue_after_s)
    queued = Job.status == JobStatus.QUEUED.value
    with rt.db.transaction() as session:
        due = list(
            session.scalars(
                select(Job.id)
                .where(
                    queued,
                    Job.enqueued_at.is_(None),
                    Job.next_attempt_at.is_(None) | (Job.next_attempt_at <= now),
                )
                .order_by(Job.next_attempt_at)
                .limit(BATCH)
            )
        )
        due += session.scalars(
            select(Job.id)
            .where(
                queued,
                Job.enqueued_at < stale,
                Job.next_attempt_at.is_(None) | (Job.next_attempt_at < stale),
            )
            .order_by(Job.enqueued_at)
            .limit(BATCH)
        )
        if due:
            session.execute(
                update(Job)
                .where(Job.id.in_(due))
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            )
    for job_id in due:
        enqueue_job(job_id)
    counts["enqueued"] = len(due)
    events: list[str] = []

    with rt.db.session() as session:
        overdue = list(
            session.scalars(
                select(Job.id).where(queued, Job.deadline_at < now).order_by(Job.deadline_at).limit(BATCH)
            )
        )
    for job_id in overdue:
        with rt.db.transaction() as session:
            result = expire_overdue(session, job_id, now)
        events.extend(result.event_ids)
        counts["deadlines_passed"] += int(result.applied)

    with rt.db.transaction() as session:
        expired = session.execute(
            select(Job.id, Job.lease_token, Job.attempts, Job.max_attempts)
            .where(Job.status == JobStatus.PROCESSING.value, Job.lease_expires_at < now)
            .limit(BATCH)
        ).all()
    requeue: list[str] = []
    for job_id, token, attempts, max_attempts in expired:
        if token is None:
            continue
        with rt.db.transaction() as session:
            result = recover_expired_lease(
                session,
                job_id=job_id,
                lease_token=token,
                attempts=attempts,
                max_attempts=max_attempts,
                now=now,
            )
        if result.job is not None:  # out of attempts: failed, its event to send
            events.extend(result.event_ids)
        elif result.applied:
            requeue.append(job_id)
    for job_id in requeue:
        enqueue_job(job_id)
    counts["leases_recovered"] = len(expired)

    with rt.db.session() as session:
        events.extend(due_events(session, now=now - timedelta(seconds=EVENT_GRACE_S), limit=BATCH))
    for event_id in events:
        enqueue_webhook(event_id)
    counts["webhooks_enqueued"] = len(events)
    if any(counts.values()):
        logger.info("sweep_done", **counts)
    return counts


@celery_app.task(name="llmq.sweep", ignore_result=True)
def sweep_task() -> dict[str, int]:
    rt = get_runtime()
    lock = rt.redis.lock("llmq:sweep-lock", timeout=max(rt.settings.sweep_interval_s * 4, 30))
    if not lock.acquire(blocking=False):
        return {}
    try:
        return sweep(rt)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass
