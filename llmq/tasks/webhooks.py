"""Webhook attempts. The first attempt of an event is sent by the LLM worker that ended the job
(:func:`send_claimed`, on its event loop); ``llmq.deliver_webhook(event_id)`` on the ``webhooks``
queue makes every later one: one attempt per execution, the next attempt a broker countdown when
short, or parked for the sweeper when long."""

from __future__ import annotations

import concurrent.futures

import structlog
from celery import Task

from llmq.models.base import utcnow
from llmq.models.db import retry_on_database_outage
from llmq.models.outbox import EventToSend, claim_event
from llmq.tasks import observe, spans
from llmq.tasks.app import celery_app
from llmq.tasks.deliveries import record_attempt
from llmq.tasks.runtime import WorkerRuntime, get_runtime
from llmq.webhooks.sender import DeliveryOutcome, post_event, prepare

logger = structlog.get_logger(__name__)


def deliver_event(rt: WorkerRuntime, event_id: str) -> str:
    settings = rt.settings
    with rt.db.transaction() as session:
        event = claim_event(session, event_id, now=utcnow(), hold_s=settings.webhook_timeout_s + 30)
    if event is None:
        return "skipped"
    with spans.job_context(event.job_id, event.request_id):
        prepared = prepare(event, allow_private=settings.webhook_allow_private)
        if isinstance(prepared, DeliveryOutcome):
            outcome = prepared
        else:
            post = post_event(rt.webhook_session, event, *prepared, timeout_s=settings.webhook_timeout_s)
            outcome = rt.run(post, timeout=settings.webhook_timeout_s + 5)
        spans.delivery(event, outcome)
        return _record_now(rt, event, observe.delivery_made(outcome))


@retry_on_database_outage
def _record_now(rt: WorkerRuntime, event: EventToSend, outcome: DeliveryOutcome) -> str:
    return record_attempt(rt, event, outcome)


def send_claimed(rt: WorkerRuntime, event: EventToSend) -> None:
    """Send an event this worker claimed when it ended the job, without waiting: the POST runs
    on the event loop and the delivery recorder writes what it gave. If this process dies first,
    the claim runs out and the sweeper hands the event to the webhooks queue (same webhook-id)."""
    rt.webhook_sends.take()
    try:
        prepared = prepare(event, allow_private=rt.settings.webhook_allow_private)
        if isinstance(prepared, DeliveryOutcome):
            spans.delivery(event, prepared)
            rt.delivery_recorder.put((event, observe.delivery_made(prepared)))
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
        spans.delivery(event, done.result())
        rt.delivery_recorder.put((event, observe.delivery_made(done.result())))

    future.add_done_callback(sent)


@celery_app.task(name="llmq.deliver_webhook", bind=True, acks_late=True, ignore_result=True)
def deliver_webhook(self: Task, event_id: str) -> str:
    return deliver_event(get_runtime(), event_id)
