"""``llmq.sweep``, run by Celery beat every ``LLMQ_SWEEP_INTERVAL_S``: the database's view of what
should be on the broker, put back where it is missing.

- queued jobs never enqueued (the broker was down at submit) or parked for a long wait whose
  time has come (``enqueued_at`` is null);
- queued jobs whose message the broker can no longer be carrying: sent, and due, more than
  ``LLMQ_REQUEUE_AFTER_S`` before the oldest message still waiting in the ``llm`` list (or before
  now, when the list is empty), and still not started. The list is first in, first out, so such a
  message was taken by a worker that never claimed the job (it died holding it, or it reads
  another database) or never reached Redis (Redis restarted empty). Sent again, they start within
  ``LLMQ_REQUEUE_AFTER_S + LLMQ_SWEEP_INTERVAL_S`` of when they should have, however long the
  backlog; a job still waiting behind the backlog is never sent twice. A duplicate message is
  harmless anyway: the claim is a compare-and-set;
- queued jobs past their deadline: failed with a ``timeout`` error;
- jobs in ``processing`` whose lease expired (their worker died): back to ``queued``, the lost
  attempt recorded, or failed when no attempt is left;
- webhook events due for an attempt that no broker message is carrying.

A Redis lock keeps it to one sweep at a time, however many beats run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis
import structlog

from llmq.models.base import utcnow
from llmq.models.outbox import due_events
from llmq.models.recovery import (
    expire_overdue,
    expired_leases,
    jobs_to_resend,
    overdue_jobs,
    recover_expired_lease,
)
from llmq.tasks.app import celery_app
from llmq.tasks.enqueue import enqueue_job, enqueue_webhook, oldest_waiting_sent_at
from llmq.tasks.runtime import WorkerRuntime, get_runtime
from llmq.workers.keys import SWEEP_LOCK

logger = structlog.get_logger(__name__)

EVENT_GRACE_S = 30.0
BATCH = 500


def line_position(rt: WorkerRuntime, now: datetime) -> datetime:
    """How far the broker's ``llm`` line has come: when its oldest waiting message was sent, or
    now when nothing waits."""
    sent_at = oldest_waiting_sent_at(rt.redis)
    if sent_at is None:
        return now
    return min(now, datetime.fromtimestamp(sent_at, UTC))


def sweep(rt: WorkerRuntime) -> dict[str, int]:
    now = utcnow()
    counts = {"enqueued": 0, "leases_recovered": 0, "deadlines_passed": 0, "webhooks_enqueued": 0}
    requeue_after = timedelta(seconds=rt.settings.requeue_after_s)
    # Read the line before the jobs: a job sent before its head and not started is not on the broker.
    sent_before = line_position(rt, now) - requeue_after
    with rt.db.transaction() as session:
        due = jobs_to_resend(
            session, now=now, sent_before=sent_before, requeue_after=requeue_after, limit=BATCH
        )
    for job_id in due:
        enqueue_job(job_id)
    counts["enqueued"] = len(due)
    events: list[str] = []

    with rt.db.session() as session:
        overdue = overdue_jobs(session, now=now, limit=BATCH)
    for job_id in overdue:
        with rt.db.transaction() as session:
            result = expire_overdue(session, job_id, now)
        events.extend(result.event_ids)
        counts["deadlines_passed"] += int(result.applied)

    with rt.db.transaction() as session:
        expired = expired_leases(session, now=now, limit=BATCH)
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
        if result.applied:
            counts["leases_recovered"] += 1
            if result.job is None:
                requeue.append(job_id)
    for job_id in requeue:
        enqueue_job(job_id)

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
    lock = rt.redis.lock(SWEEP_LOCK, timeout=max(rt.settings.sweep_interval_s * 4, 30))
    if not lock.acquire(blocking=False):
        return {}
    try:
        return sweep(rt)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass
