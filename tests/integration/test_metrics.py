"""Metrics from every process, scraped over HTTP: a real LLM worker process serving its own
``/metrics`` (``LLMQ_METRICS_PORT``) runs a few jobs through the simulator, one of them failing
with a 500 first, and its counters must equal what happened (the attempts in the database, the
tokens and cost they recorded, the webhook it sent). The API's ``/metrics`` must show the jobs it
took in and the fleet's figures read at scrape time (queues, breakers, the tenant's budget use).

Every other worker on this broker stops consuming the ``llm`` queue for the test (Celery's
``cancel_consumer``), so this worker runs every attempt and its counts are exact.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from llmq.api.app import create_app
from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.tables import Attempt, Tenant
from llmq.models.tenants import IssuedKey, create_key
from llmq.tasks.app import configure_celery
from tests.integration.conftest import SimulatorControl, wait_for_status
from tests.integration.services import WebhookReceiver, free_port, start_llm_worker, stop_process, wait_for

RUN = uuid.uuid4().hex[:6]
MODEL = f"local/metrics-{RUN}"
BARE = MODEL.split("/", 1)[1]
JOBS = 3
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def metrics_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    path = tmp_path_factory.mktemp("metrics") / "providers.toml"
    path.write_text(
        f'[prices]\ntaken_on = 2026-01-15\n\n[models."{MODEL}"]\n'
        "input_usd_per_mtok = 1.00\noutput_usd_per_mtok = 2.00\n"
    )
    return settings.model_copy(update={"providers_file": path})


@pytest.fixture(scope="module")
def metrics_app(metrics_settings: Settings, database: Database) -> Iterator[Flask]:
    app = create_app(metrics_settings)
    app.testing = True
    yield app
    app.extensions["llmq.db"].dispose()


@pytest.fixture(scope="module")
def worker_metrics(
    metrics_settings: Settings, database: Database, simulator: str, logs_dir: Path
) -> Iterator[str]:
    """The URL of the metrics of one LLM worker, the only one consuming ``llm`` meanwhile."""
    celery = configure_celery(metrics_settings)
    others = [name for reply in celery.control.ping(timeout=1.0) for name in reply]
    if others:
        celery.control.cancel_consumer("llm", destination=others, reply=True)
    port = free_port()
    name = f"metrics-{RUN}@127.0.0.1"
    env = {"LLMQ_PROVIDERS_FILE": str(metrics_settings.providers_file), "LLMQ_METRICS_PORT": str(port)}
    proc = start_llm_worker(metrics_settings, name, logs_dir / f"{name}.log", env)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: httpx.get(url, timeout=1).status_code == 200, timeout=30, what="worker metrics")
        yield url
    finally:
        stop_process(proc)
        if others:
            celery.control.add_consumer("llm", destination=others, reply=True)


@pytest.fixture
def budgeted(database: Database) -> IssuedKey:
    with database.transaction() as session:
        issued = create_key(session, tenant_name=f"metrics-{RUN}", now=utcnow(), tier="unlimited")
        session.execute(
            update(Tenant).where(Tenant.id == issued.tenant_id).values(budget_usd=Decimal("0.01"))
        )
    return issued


def test_worker_and_api_metrics_count_what_happened(
    metrics_app: Flask,
    worker_metrics: str,
    budgeted: IssuedKey,
    sim: SimulatorControl,
    webhook_receiver: WebhookReceiver,
    database: Database,
) -> None:
    client = metrics_app.test_client()
    auth = {"Authorization": f"Bearer {budgeted.api_key}"}
    api_before = scrape_app(metrics_app)
    sim.script(BARE, [{"fault": "500"}], default={"fault": "ok"})  # the first call fails, then all pass
    hook = f"/hooks/metrics-{RUN}"
    ids = []
    for n in range(JOBS):
        body = {"model": MODEL, "prompt": f"count me {n}", "max_tokens": 16}
        if n == 0:
            body["webhook_url"] = webhook_receiver.url(hook)
        response = client.post("/v1/jobs", json=body, headers=auth)
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    for job_id in ids:
        assert wait_for_status(client, auth, job_id, {"completed", "failed"})["status"] == "completed"
    wait_for(
        lambda: value(scrape(worker_metrics), "llmq_webhook_deliveries_total", outcome="success") == 1,
        timeout=20,
        what="the webhook delivery to be counted",
    )

    with database.session() as session:
        attempts = session.execute(select(Attempt).where(Attempt.job_id.in_(ids))).scalars().all()
    ok = [a for a in attempts if a.outcome == "success"]
    assert len(attempts) == JOBS + 1 and len(ok) == JOBS

    w = scrape(worker_metrics)
    assert value(w, "llmq_attempts_total", model=MODEL, outcome="success") == JOBS
    assert value(w, "llmq_attempts_total", model=MODEL, outcome="provider_error") == 1
    assert value(w, "llmq_retries_total", error_type="provider_error", kind="retry") == 1
    assert value(w, "llmq_jobs_ended_total", status="completed", how="answered") == JOBS
    assert value(w, "llmq_provider_call_duration_seconds_count", model=MODEL, outcome="success") == JOBS
    assert value(w, "llmq_provider_time_to_first_token_seconds_count", model=MODEL) == JOBS  # streamed
    assert value(w, "llmq_provider_tokens_total", model=MODEL, type="input") == sum(
        a.prompt_tokens or 0 for a in ok
    )
    assert value(w, "llmq_provider_tokens_total", model=MODEL, type="output") == sum(
        a.completion_tokens or 0 for a in ok
    )
    cost = sum(float(a.cost_usd or 0) for a in attempts)
    assert cost > 0
    assert value(
        w, "llmq_provider_cost_usd_total", tenant_id=budgeted.tenant_id, model=MODEL
    ) == pytest.approx(cost)
    assert value(w, "llmq_webhook_delivery_duration_seconds_count", outcome="success") == 1
    assert value(w, "llmq_calls_in_flight") == 0
    assert len(webhook_receiver.for_path(hook)) == 1

    a = scrape_app(metrics_app)
    assert value(a, "llmq_jobs_submitted_total") - value(api_before, "llmq_jobs_submitted_total") == JOBS
    assert ("llmq_queue_depth", (("queue", "llm"),)) in a
    assert ("llmq_queue_oldest_age_seconds", (("queue", "webhooks"),)) in a
    assert value(a, "llmq_breaker_state", model=MODEL, state="closed") == 1
    assert value(a, "llmq_breaker_state", model=MODEL, state="open") == 0
    # The tenant's budget: what the ledger says it spent, as a share of 0.01 USD.
    assert value(a, "llmq_budget_used_ratio", tenant=f"metrics-{RUN}") == pytest.approx(cost / 0.01, rel=0.01)
    usage_cost = value(a, "llmq_usage_cost_usd_total", tenant=f"metrics-{RUN}", model=MODEL)
    assert usage_cost == pytest.approx(cost)


def scrape_app(app: Flask) -> Samples:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
