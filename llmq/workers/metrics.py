"""Every Prometheus metric a process of llmq counts itself, defined once, here.

A worker counts what only it sees: each provider call (its duration, first token, tokens, cost,
outcome), the retries it decides, the jobs it ends, its calls in flight and the webhook POSTs it
makes. Each worker process serves these on its own ``/metrics`` port (``LLMQ_METRICS_PORT``,
see :func:`serve_metrics`); Prometheus sums them over the fleet. The API counts the jobs it takes
in (``JOBS_SUBMITTED``); what the whole fleet shares (queue depth, parked jobs, breakers, limits,
budgets) the API reads at scrape time from Redis and small indexed queries (``api/fleet.py``).

Labels are bounded: a model id from the providers file, an error type from the providers' error
taxonomy, a tenant id (a small, operator-made set), a status. Never a job id or a user id.

``LLMQ_METRICS`` (on by default) switches recording off (``set_enabled``) so that the cost of
the metrics can be measured with the same build: off, every record function returns at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from decimal import Decimal

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
_WEBHOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

PROVIDER_CALL_DURATION = Histogram(
    "llmq_provider_call_duration_seconds",
    "Provider call duration by model and outcome (success or the error type)",
    ["model", "outcome"],
    buckets=_CALL_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "llmq_provider_time_to_first_token_seconds",
    "Seconds from the start of a streamed call to its first text",
    ["model"],
    buckets=_TTFT_BUCKETS,
)
PROVIDER_TOKENS = Counter(
    "llmq_provider_tokens",
    "Tokens of ended calls by model and type (input counts cached and cache_write too)",
    ["model", "type"],
)
PROVIDER_COST = Counter(
    "llmq_provider_cost_usd", "US dollars of ended calls by tenant id and model", ["tenant_id", "model"]
)
ATTEMPTS = Counter(
    "llmq_attempts",
    "Provider attempts ended, by model and outcome (success or the error type)",
    ["model", "outcome"],
)
RETRIES = Counter(
    "llmq_retries",
    "Retries and fallbacks scheduled after a failed attempt, by error type",
    ["error_type", "kind"],
)
JOBS_SUBMITTED = Counter("llmq_jobs_submitted", "Jobs accepted by the API (202)")
JOBS_ENDED = Counter("llmq_jobs_ended", "Jobs ended by a worker, by status and how", ["status", "how"])
CALLS_IN_FLIGHT = Gauge(
    "llmq_calls_in_flight",
    "Provider calls started and not yet recorded in this process",
    multiprocess_mode="livesum",
)
WEBHOOK_DELIVERIES = Counter(
    "llmq_webhook_deliveries", "Webhook delivery attempts by outcome (success, failed, rejected)", ["outcome"]
)
WEBHOOK_DURATION = Histogram(
    "llmq_webhook_delivery_duration_seconds",
    "Webhook POST latency by outcome",
    ["outcome"],
    buckets=_WEBHOOK_BUCKETS,
)

_TOKEN_TYPES = ("input", "output", "cached", "cache_write")
_enabled = True
_serving_pid: int | None = None


def set_enabled(on: bool) -> None:
    global _enabled
    _enabled = on


def enabled() -> bool:
    return _enabled


def serve_metrics(port: int, in_flight: Callable[[], float]) -> bool:
    """Serve this process's metrics on ``port`` (all interfaces, for Prometheus); 0: off."""
    global _serving_pid
    if port <= 0 or not _enabled:
        return False
    CALLS_IN_FLIGHT.set_function(in_flight)
    if _serving_pid != os.getpid():  # a runtime built again in this process keeps the server
        start_http_server(port)
        _serving_pid = os.getpid()
    return True


def call_ended(
    model: str,
    outcome: str,
    seconds: float,
    tenant_id: str,
    tokens: tuple[int, int, int, int] | None,
    cost_usd: Decimal | None,
) -> None:
    """One provider call ended: ``outcome`` is ``success`` or its error type; ``tokens`` is
    ``(input, output, cached, cache_write)`` when the provider billed any."""
    if not _enabled:
        return
    PROVIDER_CALL_DURATION.labels(model, outcome).observe(seconds)
    ATTEMPTS.labels(model, outcome).inc()
    if tokens is not None:
        for kind, count in zip(_TOKEN_TYPES, tokens, strict=True):
            if count:
                PROVIDER_TOKENS.labels(model, kind).inc(count)
    if cost_usd:
        PROVIDER_COST.labels(tenant_id, model).inc(float(cost_usd))


def first_token(model: str, seconds: float) -> None:
    if _enabled:
        TIME_TO_FIRST_TOKEN.labels(model).observe(seconds)


def retry_scheduled(error_type: str, kind: str) -> None:
    if _enabled:
        RETRIES.labels(error_type, kind).inc()


def job_ended(status: str, how: str) -> None:
    """``status``: completed | failed; ``how``: answered, cache, degraded, refused, deadline, ..."""
    if _enabled:
        JOBS_ENDED.labels(status, how).inc()


def job_submitted() -> None:
    if _enabled:
        JOBS_SUBMITTED.inc()


def webhook_delivered(outcome: str, seconds: float) -> None:
    if _enabled:
        WEBHOOK_DELIVERIES.labels(outcome).inc()
        WEBHOOK_DURATION.labels(outcome).observe(seconds)
