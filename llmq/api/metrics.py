"""Prometheus metrics for ``/metrics``.

Request counts and latencies are measured in the API process (multi-process aware under
gunicorn when ``PROMETHEUS_MULTIPROC_DIR`` is set). Job and attempt counts are read from the
database at scrape time: the database is the source of truth and sees every worker on every host.
The usage counters by tenant and model (``llmq_usage_*_total``) are the rows of ``usage_totals``,
kept by the workers with every ended attempt: one small query, never a scan of the jobs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from llmq.models.db import Database
from llmq.models.stats import attempts_by_outcome, deliveries_by_success, jobs_by_status
from llmq.models.usage import usage_totals

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


class DatabaseCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("llmq_jobs", "Jobs by status", labels=["status"])
        attempts = CounterMetricFamily(
            "llmq_provider_attempts",
            "Provider attempts by provider and outcome",
            labels=["provider", "outcome"],
        )
        deliveries = CounterMetricFamily(
            "llmq_webhook_deliveries", "Webhook delivery attempts by result", labels=["success"]
        )
        labels = ["tenant", "model"]
        calls = CounterMetricFamily("llmq_usage_calls", "Provider calls by tenant and model", labels=labels)
        failures = CounterMetricFamily(
            "llmq_usage_failures", "Failed provider calls by tenant and model", labels=labels
        )
        tokens = CounterMetricFamily(
            "llmq_usage_tokens",
            "Tokens billed by tenant, model and type (input counts cached and cache_write too)",
            labels=[*labels, "type"],
        )
        cost = CounterMetricFamily(
            "llmq_usage_cost_usd", "US dollars billed by tenant and model", labels=labels
        )
        with self.db.session() as session:
            for status, count in jobs_by_status(session):
                jobs.add_metric([status], count)
            for provider, outcome, count in attempts_by_outcome(session):
                attempts.add_metric([provider, outcome], count)
            for success, count in deliveries_by_success(session):
                deliveries.add_metric([str(bool(success)).lower()], count)
            for tenant, model, counters in usage_totals(session):
                calls.add_metric([tenant, model], counters["calls"])
                failures.add_metric([tenant, model], counters["failures"])
                for column, kind in _TOKEN_TYPES.items():
                    tokens.add_metric([tenant, model, kind], counters[column])
                cost.add_metric([tenant, model], float(counters["cost_usd"]))
        yield jobs
        yield attempts
        yield deliveries
        yield from (calls, failures, tokens, cost)


def init_metrics(app: Flask, db: Database) -> None:
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

    app.extensions["llmq.db_collector"] = DatabaseCollector(db)


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
    db_registry.register(app.extensions["llmq.db_collector"])
    body += generate_latest(db_registry)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)
