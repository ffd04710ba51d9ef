"""Webhook attempts. The first attempt of an event is sent by the LLM worker that ended the job
(:func:`send_claimed`, on its event loop); ``llmq.deliver_webhook(event_id)`` on the ``webhooks``
queue makes every later one: one attempt per execution, the next attempt a broker countdown when
short, or parked for the sweeper when long."""

from __future__ import annotations

import concurrent.futures
from datetime import timedelta

import structlog
from celery import Task

from llmq.models.base import utcnow
from llmq.models.webhook_events import EventToSend, claim_event, record_delivery
from llmq.tasks.app import celery_app
from llmq.tasks.enqueue import enqueue_webhook
from llmq.workers.runtime import WorkerRuntime, get_runtime, retry_on_database_outage
from llmq.workers.webhook_sender import DeliveryOutcome, next_delivery_delay, post_event, prepare

logger = structlog.get_logger(__name__)


def deliver_event(rt: WorkerRuntime, event_id: str) -> str:
    settings = rt.settings
    with rt.db.transaction() as session:
        event = claim_event(session, event_id, now=utcnow(), hold_s=settings.webhook_timeout_s + 30)
    if event is None:
        return "skipped"
    prepared = prepare(event, allow_private=settings.webhook_allow_private)
    if isinstance(prepared, DeliveryOutcome):
        outcome = prepared
    else:
        post = post_event(rt.webhook_session, event, *prepared, timeout_s=settings.webhook_timeout_s)
        outcome = rt.run(post, timeout=settings.webhook_timeout_s + 5)
    return record_attempt(rt, event, outcome)


def send_claimed(rt: WorkerRuntime, event: EventToSend) -> None:
    """Send an event this worker claimed when it ended the job, without waiting: the POST runs
    on the event loop and a finisher thread records it. If this process dies first, the claim
    runs out and the sweeper hands the event to the webhooks queue (same webhook-id)."""
    rt.webhook_sends.take()
    try:
        prepared = prepare(event, allow_private=rt.settings.webhook_allow_private)
        if isinstance(prepared, DeliveryOutcome):
            rt.finishers.submit(_record_quietly, rt, event, prepared)
            return
        post = post_event(rt.webhook_session, event, *prepared, timeout_s=rt.settings.webhook_timeout_s)
        future = rt.submit(post)
    except BaseException:
        rt.webhook_sends.give()
        raise

    def sent(done: concurrent.futures.Future[DeliveryOutcome]) -> None:
        if done.cancelled() or done.exception() is not None:
            rt.webhook_sends.give()  # the loop is stopping: the claim runs out, the sweeper resends
            return
        rt.finishers.submit(_record_quietly, rt, event, done.result())

    future.add_done_callback(sent)


def _record_quietly(rt: WorkerRuntime, event: EventToSend, outcome: DeliveryOutcome) -> None:
    try:
        record_attempt(rt, event, outcome)
    except Exception as exc:  # the claim runs out and the sweeper resends the event
        logger.error("webhook_record_failed", event_id=event.event_id, error=type(exc).__name__, exc_info=exc)
    finally:
        rt.webhook_sends.give()


@retry_on_database_outage
def record_attempt(rt: WorkerRuntime, event: EventToSend, outcome: DeliveryOutcome) -> str:
    """Write what an attempt gave and schedule the next one, if any."""
    settings = rt.settings
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
        event_id=event.event_id,
        attempt=event.attempt,
        status_code=outcome.status_code,
        outcome=status,
        retry_in_s=delay,
    )
    if delay is not None and delay <= settings.max_countdown_s:
        enqueue_webhook(event.event_id, countdown=delay)
    return status


@celery_app.task(name="llmq.deliver_webhook", bind=True, acks_late=True, ignore_result=True)
def deliver_webhook(self: Task, event_id: str) -> str:
    return deliver_event(get_runtime(), event_id)
