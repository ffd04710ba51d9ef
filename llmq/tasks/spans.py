"""The worker's side of correlation: a job's ``request_id`` and ``job_id`` bound into every log line
of its task, finisher, writers and webhook deliveries, and its spans (when tracing is on).

A job carries the request_id and the W3C traceparent of the HTTP request that submitted it (on
its row, read with every claim; also in each job message's headers, for the lines logged before
the claim). Each thread that works for a job binds them for the time it does (structlog
contextvars are per thread, so the finisher threads and the batch writers bind per item).

The spans follow OpenTelemetry's GenAI semantic conventions for the provider attempts
(``gen_ai.system``, ``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ...), and are all
children of the job's submit span (``observability/tracing.py`` says why they are recorded after
the fact). With tracing off each function returns at its first line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog

from llmq.models.outbox import EventToSend
from llmq.models.records import ClaimedJob
from llmq.observability import tracing
from llmq.webhooks.sender import DeliveryOutcome

if TYPE_CHECKING:
    from llmq.tasks.call import CallOutcome

REQUEST_ID_HEADER = "llmq_request_id"
_IDS = ("job_id", "request_id")


def header(task_request: Any, name: str) -> Any:
    """A custom header of the Celery message being run (Celery puts them on the request)."""
    value = getattr(task_request, name, None)
    if value is None:
        value = (getattr(task_request, "headers", None) or {}).get(name)
    return value


def message_headers() -> dict[str, str]:
    """Headers for a job message: the request_id bound here (the API's request, or the task that
    re-sends the job), so that the next task's lines before its claim carry it too."""
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    return {REQUEST_ID_HEADER: request_id} if request_id else {}


@contextlib.contextmanager
def job_context(job_id: str | None, request_id: str | None) -> Iterator[None]:
    """Bind the job's ids into this thread's log lines for the block, and leave no id of this job
    bound after it (a pool thread's next job must not inherit them); what was bound before comes
    back."""
    before = {k: v for k, v in structlog.contextvars.get_contextvars().items() if k in _IDS}
    structlog.contextvars.unbind_contextvars(*_IDS)
    structlog.contextvars.bind_contextvars(
        **{k: v for k, v in zip(_IDS, (job_id, request_id), strict=True) if v}
    )
    try:
        yield
    finally:
        structlog.contextvars.unbind_contextvars(*_IDS)
        structlog.contextvars.bind_contextvars(**before)


def bind_claim(claim: ClaimedJob) -> None:
    """After the claim: the job's own request_id (the message may not have carried one)."""
    if claim.request_id:
        structlog.contextvars.bind_contextvars(request_id=claim.request_id)


def for_job(event: EventToSend, claim: ClaimedJob | None) -> EventToSend:
    """A claimed event, with its job's correlation (events come out of the transition without)."""
    if claim is None:
        return event
    return EventToSend(
        event.event_id,
        event.url,
        event.payload,
        event.secret,
        event.attempt,
        job_id=claim.job_id,
        request_id=claim.request_id,
        traceparent=claim.traceparent,
    )


def queue_wait(claim: ClaimedJob, sent_at: float | None) -> None:
    """The wait of the job's message from when it was sent (a retry's countdown included) to
    this claim; the first attempt's starts at the submit when the message has no time."""
    if not tracing.enabled() or not claim.traceparent:
        return
    if sent_at is not None:
        start_ns = int(float(sent_at) * 1e9)
    elif claim.created_at is not None:
        start_ns = int(claim.created_at.timestamp() * 1e9)
    else:
        return
    tracing.record_span(
        "llmq.queue_wait",
        claim.traceparent,
        start_ns=start_ns,
        attributes={"llmq.job_id": claim.job_id, "llmq.attempt": claim.attempt_number},
    )


def attempt(claim: ClaimedJob, outcome: CallOutcome) -> None:
    """One provider attempt, with the GenAI semantic conventions' attributes."""
    if not tracing.enabled() or not claim.traceparent:
        return
    provider, _, bare_model = claim.model.rpartition("/")
    result = outcome.result
    latency_ms = result.latency_ms if result is not None else outcome.latency_ms
    end_ns = tracing.now_ns()
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": provider or bare_model,
        "gen_ai.request.model": bare_model,
        "gen_ai.request.max_tokens": claim.max_tokens,
        "gen_ai.request.temperature": claim.temperature,
        "llmq.job_id": claim.job_id,
        "llmq.attempt": claim.attempt_number,
        "llmq.model": claim.model,
    }
    error = None
    if result is not None:
        attributes.update(
            {
                "gen_ai.response.model": (result.served_by or claim.model).rpartition("/")[2],
                "gen_ai.response.finish_reasons": [result.finish_reason],
                "gen_ai.usage.input_tokens": result.prompt_tokens,
                "gen_ai.usage.output_tokens": result.completion_tokens,
                "llmq.cost_usd": float(result.cost_usd) if result.cost_usd is not None else None,
                "http.response.status_code": result.http_status,
            }
        )
    elif outcome.failure is not None:
        failure = outcome.failure
        error = failure.error_type
        attributes.update(
            {"error.type": failure.error_type, "http.response.status_code": failure.http_status}
        )
        if failure.billed is not None:
            attributes["gen_ai.usage.input_tokens"] = failure.billed.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = failure.billed.completion_tokens
    else:
        error = "interrupted"
    tracing.record_span(
        f"chat {bare_model}",
        claim.traceparent,
        start_ns=end_ns - latency_ms * 1_000_000,
        end_ns=end_ns,
        attributes=attributes,
        error=error,
        kind="client",
    )


def delivery(event: EventToSend, outcome: DeliveryOutcome) -> None:
    """One webhook POST (or its refusal by the SSRF guard)."""
    if not tracing.enabled() or not event.traceparent:
        return
    end_ns = time.time_ns()
    tracing.record_span(
        "llmq.webhook.deliver",
        event.traceparent,
        start_ns=end_ns - outcome.latency_ms * 1_000_000,
        end_ns=end_ns,
        attributes={
            "llmq.job_id": event.job_id,
            "llmq.webhook.event_id": event.event_id,
            "llmq.webhook.attempt": event.attempt,
            "http.request.method": "POST",
            "http.response.status_code": outcome.status_code,
        },
        error=None if outcome.success else (outcome.error or "failed"),
        kind="client",
    )
