"""Putting work on the broker, and reading how far the broker's line has come.

Only ids travel; every task reloads what it needs. Each job message carries the time it was sent
(header ``llmq_sent_at``), so that the sweeper can tell, from the oldest message still waiting in
the ``llm`` list, which queued jobs the broker can no longer be carrying (see ``tasks/sweep.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import cast

import redis
import structlog

from llmq.tasks.app import LLM_QUEUE, WEBHOOK_QUEUE, celery_app
from llmq.tasks.spans import message_headers

SENT_AT_HEADER = "llmq_sent_at"
logger = structlog.get_logger(__name__)


def enqueue_job(job_id: str, countdown: float | None = None) -> None:
    celery_app.send_task(
        "llmq.generate",
        args=[job_id],
        queue=LLM_QUEUE,
        countdown=countdown,
        headers={SENT_AT_HEADER: time.time(), **message_headers()},
    )


def try_enqueue_jobs(job_ids: list[str]) -> list[str]:
    """:func:`try_enqueue_job` for many jobs over one producer (a batch's chunk of lines: half
    the cost of a publish each). Returns the ids the broker did not take."""
    if not job_ids:
        return []
    sent = 0
    try:
        with celery_app.producer_or_acquire() as producer:
            for job_id in job_ids:
                celery_app.send_task(
                    "llmq.generate",
                    args=[job_id],
                    queue=LLM_QUEUE,
                    producer=producer,
                    headers={SENT_AT_HEADER: time.time(), **message_headers()},
                )
                sent += 1
    except Exception as exc:  # kombu raises several unrelated types for an unreachable broker
        logger.warning("enqueue_deferred", jobs=len(job_ids) - sent, error=type(exc).__name__)
        return job_ids[sent:]
    return []


def enqueue_webhook(event_id: str, countdown: float | None = None) -> None:
    celery_app.send_task(
        "llmq.deliver_webhook",
        args=[event_id],
        queue=WEBHOOK_QUEUE,
        countdown=countdown,
        headers={SENT_AT_HEADER: time.time()},  # the age of the oldest waiting one (``/metrics``)
    )


def enqueue_batch_expand(batch_id: str) -> None:
    """Make a batch's lines into jobs (``tasks/batches.py``); the batch tick re-sends it when the
    expansion stops moving."""
    celery_app.send_task("llmq.batch_expand", args=[batch_id], queue=WEBHOOK_QUEUE)


def try_enqueue_batch_expand(batch_id: str) -> bool:
    return _try(
        lambda ident, countdown: enqueue_batch_expand(ident),
        batch_id,
        None,
        "batch_enqueue_deferred",
        "batch_id",
    )


def try_enqueue_job(job_id: str, countdown: float | None = None) -> bool:
    """Enqueue, or log and leave it to the sweeper when the broker cannot take it now (the job's
    row says it is queued and due: the sweeper sends every such job the broker does not carry)."""
    return _try(enqueue_job, job_id, countdown, "enqueue_deferred", "job_id")


def try_enqueue_webhook(event_id: str, countdown: float | None = None) -> bool:
    """Enqueue a webhook attempt, or log and leave it to the sweeper (the event is due in the
    database, and the sweeper sends due events that no message carries)."""
    return _try(enqueue_webhook, event_id, countdown, "webhook_enqueue_deferred", "event_id")


def _try(send: Callable[..., None], ident: str, countdown: float | None, event: str, field: str) -> bool:
    try:
        send(ident, countdown=countdown)
        return True
    except Exception as exc:  # kombu raises several unrelated types for an unreachable broker
        logger.warning(event, **{field: ident}, error=type(exc).__name__)
        return False


def oldest_waiting_sent_at(client: redis.Redis, queue: str = LLM_QUEUE) -> float | None:
    """When the oldest message still waiting in ``queue`` was sent (unix seconds), or ``None`` when
    nothing waits. kombu's Redis transport LPUSHes and BRPOPs, so the oldest message is the
    list's last element: one LINDEX, whatever the backlog. A message without the header (sent by
    an older llmq) counts as sent now, which holds every re-send back until it has been taken."""
    raw = cast(str | bytes | None, client.lindex(queue, -1))
    if raw is None:
        return None
    try:
        return float(json.loads(raw)["headers"][SENT_AT_HEADER])
    except (ValueError, KeyError, TypeError):
        return time.time()
