"""``llmq.deliver_webhook(event_id)`` on the ``webhooks`` queue: one attempt per execution;
the next attempt is a broker countdown when short, or parked for the sweeper when long."""

from __future__ import annotations

from datetime import timedelta

import structlog
from celery import Task

from llmq.models.base import utcnow
from llmq.models.webhook_events import claim_event, record_delivery
from llmq.tasks.app import celery_app
from llmq.tasks.enqueue import enqueue_webhook
from llmq.workers.runtime import WorkerRuntime, get_runtime
from llmq.workers.webhook_sender import next_delivery_delay, post_event

logger = structlog.get_logger(__name__)


def deliver_event(rt: WorkerRuntime, event_id: str) -> str:
    settings = rt.settings
    with rt.db.transaction() as session:
        event = claim_event(session, event_id, now=utcnow(), hold_s=settings.webhook_timeout_s + 30)
    if event is None:
        return "skipped"
    outcome = post_event(
        rt.http, event, timeout_s=settings.webhook_timeout_s, allow_private=settings.webhook_allow_private
    )
    delay = None
    if not outcome.success and not outcome.stop:
        delay = next_delivery_delay(settings.webhook_retry_schedule, event.attempt, outcome.retry_after_s)
    now = utcnow()
    with rt.db.transaction() as session:
        status = record_delivery(
            session,
            event,
            now=now,
            status_code=outcome.status_code,
            latency_ms=outcome.latency_ms,
            error=outcome.error,
            success=outcome.success,
            next_attempt_at=None if delay is None else now + timedelta(seconds=delay),
            stop=outcome.stop,
        )
    logger.info(
        "webhook_attempt",
        event_id=event_id,
        attempt=event.attempt,
        status_code=outcome.status_code,
        outcome=status,
        retry_in_s=delay,
    )
    if delay is not None and delay <= settings.max_countdown_s:
        enqueue_webhook(event_id, countdown=delay)
    return status


@celery_app.task(name="llmq.deliver_webhook", bind=True, acks_late=True, ignore_result=True)
def deliver_webhook(self: Task, event_id: str) -> str:
    return deliver_event(get_runtime(), event_id)
