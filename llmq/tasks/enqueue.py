"""Putting work on the broker. Only ids travel; every task reloads what it needs."""

from __future__ import annotations

from llmq.tasks.app import LLM_QUEUE, WEBHOOK_QUEUE, celery_app


def enqueue_job(job_id: str, countdown: float | None = None) -> None:
    celery_app.send_task("llmq.generate", args=[job_id], queue=LLM_QUEUE, countdown=countdown)


def enqueue_webhook(event_id: str, countdown: float | None = None) -> None:
    celery_app.send_task("llmq.deliver_webhook", args=[event_id], queue=WEBHOOK_QUEUE, countdown=countdown)
