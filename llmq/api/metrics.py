"""Prometheus metrics for the API's ``/metrics``.

Request counts and latencies, and the jobs submitted, are measured in the API process
(multi-process aware under gunicorn when ``PROMETHEUS_MULTIPROC_DIR`` is set). What the fleet
shares (queues, parked jobs, breakers, limits, budgets) is read at scrape time by
``fleet.FleetCollector``, each read bounded. The usage counters by tenant and model
(``llmq_usage_*_total``) are the rows of ``usage_totals``, kept by the workers with every ended
attempt: one small query, never a scan of the jobs. Per-call, per-attempt and webhook counters
come from each worker's own ``/metrics`` port (``workers/metrics.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from llmq.api.fleet import FleetCollector
from llmq.models.db import Database
from llmq.models.usage import usage_totals
from llmq.workers import metrics

_TOKEN_TYPES = {
    "prompt_tokens": "input",
    "completion_tokens": "output",
    "cached_tokens": "cached",
    "cache_write_tokens": "cache_write",
}

REQUESTS = Counter(
    "llmq_http_requests_total", "HTTP requests by endpoint and status", ["method", "endpoint", "status"]
)
LATENCY = Histogram(
    "llmq_http_request_duration_seconds",
    "HTTP request latency by endpoint",
    ["method", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class UsageCollector(Collector):
    """The rows of ``usage_totals`` (a row per tenant and model) as counters."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> Iterator[Any]:
        return iter(usage_families())

    def collect(self) -> Iterator[Any]:
        calls, failures, tokens, cost = families = usage_families()
        with self.db.session() as session:
            for tenant, model, counters in usage_totals(session):
                calls.add_metric([tenant, model], counters["calls"])
                failures.add_metric([tenant, model], counters["failures"])
                for column, kind in _TOKEN_TYPES.items():
                    tokens.add_metric([tenant, model, kind], counters[column])
                cost.add_metric([tenant, model], float(counters["cost_usd"]))
        return iter(families)


def usage_families() -> list[CounterMetricFamily]:
    labels = ["tenant", "model"]
    return [
        CounterMetricFamily("llmq_usage_calls", "Provider calls by tenant and model", labels=labels),
        CounterMetricFamily("llmq_usage_failures", "Failed calls by tenant and model", labels=labels),
        CounterMetricFamily(
            "llmq_usage_tokens",
            "Tokens billed by tenant, model and type (input counts cached and cache_write too)",
            labels=[*labels, "type"],
        ),
        CounterMetricFamily("llmq_usage_cost_usd", "US dollars billed by tenant and model", labels=labels),
    ]


def init_metrics(app: Flask, db: Database) -> None:
    """Time every request; register the scrape-time collectors (the fleet's needs the app's Redis,
    breakers and limiter, so it is made here, after ``create_app`` has put them in extensions)."""
    metrics.set_enabled(app.extensions["llmq.settings"].metrics)

    @app.before_request
    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        started = g.get("request_started")
        if started is not None:
            LATENCY.labels(request.method, endpoint).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        return response

    app.extensions["llmq.collectors"] = [
        UsageCollector(db),
        FleetCollector(
            db,
            app.extensions["llmq.redis"],
            app.extensions["llmq.providers"],
            app.extensions["llmq.breakers"],
            app.extensions["llmq.limiter"],
        ),
    ]


def render_metrics(app: Flask) -> Response:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    body = generate_latest(registry)
    db_registry = CollectorRegistry()
    for collector in app.extensions["llmq.collectors"]:
        db_registry.register(collector)
    body += generate_latest(db_registry)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)
