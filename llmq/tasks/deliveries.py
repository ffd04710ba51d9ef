"""Recording webhook attempts: the delivery row, the event's new state, and the next attempt.

The LLM worker's first attempts are written in batches by the runtime's delivery recorder (one
transaction for every POST that ended meanwhile); the webhooks queue records each retry at once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import structlog

from llmq.models.base import utcnow
from llmq.models.outbox import DeliveryRecord, EventToSend, record_deliveries
from llmq.models.state import WebhookEventStatus
from llmq.tasks.enqueue import try_enqueue_webhook
from llmq.webhooks.schedule import next_delivery_delay
from llmq.webhooks.sender import DeliveryOutcome

if TYPE_CHECKING:
    from llmq.tasks.runtime import WorkerRuntime

logger = structlog.get_logger(__name__)


def record_attempt(rt: WorkerRuntime, event: EventToSend, outcome: DeliveryOutcome) -> str:
    """Write what an attempt gave and schedule the next one, if any."""
    return write_deliveries(rt, [(event, outcome)])[0]


def write_deliveries(rt: WorkerRuntime, sent: list[tuple[EventToSend, DeliveryOutcome]]) -> list[str]:
    """Write what several attempts gave in one transaction, then enqueue the retries that are due
    soon (longer ones wait in the database for the sweeper). Returns each event's new status."""
    settings = rt.settings
    now = utcnow()
    records = []
    for event, outcome in sent:
        delay = None
        if not outcome.success and not outcome.stop:
            delay = next_delivery_delay(settings.webhook_retry_schedule, event.attempt, outcome.retry_after_s)
        records.append(
            DeliveryRecord(
                event,
                now,
                status_code=outcome.status_code,
                latency_ms=outcome.latency_ms,
                error=outcome.error,
                success=outcome.success,
                next_attempt_at=None if delay is None else now + timedelta(seconds=delay),
                stop=outcome.stop,
            )
        )
    with rt.db.transaction() as session:
        statuses = record_deliveries(session, records)
    for record, status in zip(records, statuses, strict=True):
        delay = None
        if record.next_attempt_at is not None and status == WebhookEventStatus.PENDING:
            delay = (record.next_attempt_at - now).total_seconds()
        logger.info(
            "webhook_attempt",
            **_correlation(record.event),
            event_id=record.event.event_id,
            attempt=record.event.attempt,
            status_code=record.status_code,
            outcome=status,
            retry_in_s=delay,
        )
        if delay is not None and delay <= settings.max_countdown_s:
            try_enqueue_webhook(record.event.event_id, countdown=delay)
    return statuses


def _correlation(event: EventToSend) -> dict[str, str]:
    """The event's job ids for its log line: the recorder writes many jobs' events per batch, on
    its own thread, so they are passed per line rather than bound."""
    return {k: v for k, v in (("job_id", event.job_id), ("request_id", event.request_id)) if v}
