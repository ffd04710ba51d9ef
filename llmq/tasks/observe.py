"""Turning what the generate and webhook tasks see into metrics (``workers/metrics.py``).

The tasks call these with the objects they already hold, one line at each natural point: a call
ended (:func:`call_ended`), a failure's next step (:func:`step_recorded`), a job ended another way
(:func:`job_ended`), a webhook attempt made (:func:`delivery_made`). Kept apart from the
tasks so that they stay about jobs, not about counting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from llmq.models.records import ClaimedJob
from llmq.workers import metrics

if TYPE_CHECKING:
    from llmq.tasks.call import CallOutcome
    from llmq.webhooks.sender import DeliveryOutcome

job_ended = metrics.job_ended


def call_ended(claim: ClaimedJob, outcome: CallOutcome) -> None:
    """A provider call ended (its finisher has its outcome)."""
    if not metrics.enabled():
        return
    seconds = outcome.latency_ms / 1000
    tokens: tuple[int, int, int, int] | None
    if outcome.result is not None:
        r = outcome.result
        tokens = (r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.cache_write_tokens)
        seconds = r.latency_ms / 1000
        metrics.call_ended(claim.model, "success", seconds, claim.tenant_id, tokens, r.cost_usd)
    elif outcome.failure is not None:
        billed = outcome.failure.billed
        tokens = cost = None
        if billed is not None:
            tokens = (
                billed.prompt_tokens,
                billed.completion_tokens,
                billed.cached_tokens,
                billed.cache_write_tokens,
            )
            cost = billed.cost_usd
        metrics.call_ended(claim.model, outcome.failure.error_type, seconds, claim.tenant_id, tokens, cost)
    else:
        metrics.call_ended(claim.model, "interrupted", seconds, claim.tenant_id, None, None)


def step_recorded(what: str, outcome: CallOutcome) -> None:
    """A failed call's next step was recorded: a retry or a fallback, or the job ended."""
    error_type = outcome.failure.error_type if outcome.failure is not None else "none"
    if what in ("retry", "fallback"):
        metrics.retry_scheduled(error_type, what)
    elif what == "degrade":
        metrics.job_ended("completed", "degraded")
    elif what == "fail":
        metrics.job_ended("failed", error_type)


def first_token_timer(model: str, on_progress: Callable[[str, int], None]) -> Callable[[str, int], None]:
    """``on_progress`` that also observes the time to the first streamed piece of text."""
    if not metrics.enabled():
        return on_progress
    started = time.monotonic()

    def timed(text: str, pieces: int) -> None:
        if pieces == 1:
            metrics.first_token(model, time.monotonic() - started)
        on_progress(text, pieces)

    return timed


def delivery_made(outcome: DeliveryOutcome) -> DeliveryOutcome:
    """A webhook attempt was made (by an LLM worker's first POST or the webhooks worker);
    counted when it ends, before it is written (a batch written twice counts once)."""
    if metrics.enabled():
        kind = "success" if outcome.success else "rejected" if outcome.stop else "failed"
        metrics.webhook_delivered(kind, outcome.latency_ms / 1000)
    return outcome
