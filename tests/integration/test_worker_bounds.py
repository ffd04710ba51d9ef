"""An LLM worker as deployed (``llmq worker --queues llm``: a few pool threads and one event
loop) keeps at most ``LLMQ_WORKER_MAX_IN_FLIGHT`` calls in flight, takes the rest as room frees
up, and sends the first webhook attempt itself: no webhook worker runs here."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from llmq.api.app import create_app
from llmq.config.settings import Settings
from llmq.tasks.app import configure_celery
from tests.integration.conftest import SimulatorControl, unique_model, wait_for_status
from tests.integration.services import (
    WebhookReceiver,
    start_llm_worker,
    stop_process,
    wait_for,
)

MAX_IN_FLIGHT = 3
NODE = f"bounded-{uuid.uuid4().hex[:6]}@127.0.0.1"


@pytest.fixture(scope="module")
def bounded_settings(settings: Settings) -> Settings:
    redis_url = settings.broker_url.rsplit("/", 1)[0] + "/12"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return settings.model_copy(update={"redis_url": redis_url})


@pytest.fixture(scope="module")
def bounded_worker(bounded_settings: Settings, simulator: str, logs_dir: Path) -> Iterator[str]:
    proc = start_llm_worker(
        bounded_settings,
        NODE,
        logs_dir / "bounded.log",
        {"LLMQ_WORKER_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT)},
    )
    try:
        yield NODE
    finally:
        stop_process(proc)
        configure_celery(bounded_settings)


@pytest.fixture(scope="module")
def bounded_app(bounded_settings: Settings, bounded_worker: str) -> Iterator[Flask]:
    app = create_app(bounded_settings)
    yield app
    app.extensions["llmq.db"].dispose()


def test_a_full_worker_takes_no_more_calls_and_every_job_completes_with_its_webhook(
    bounded_app: Flask, auth: dict[str, str], sim: SimulatorControl, webhook_receiver: WebhookReceiver
) -> None:
    client: FlaskClient = bounded_app.test_client()
    receiver = webhook_receiver
    bare = unique_model("bounded")
    sim.script(bare, [], default={"fault": "ok", "latency": 0.6})
    httpx.post(f"{sim.url}/_sim/stats/reset")
    ids = []
    for i in range(12):
        body = {"prompt": f"job {i}", "model": f"openai/{bare}", "webhook_url": receiver.url(f"/bounded/{i}")}
        response = client.post("/v1/jobs", json=body, headers=auth)
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    jobs = [wait_for_status(client, auth, job_id, {"completed", "failed"}, timeout=60) for job_id in ids]
    assert {job["status"] for job in jobs} == {"completed"}
    peak = sim.stats()["peak_in_flight_by_model"].get(bare, 0)
    assert 1 <= peak <= MAX_IN_FLIGHT, f"peak in flight {peak}, bound {MAX_IN_FLIGHT}"
    assert sim.requests_for(bare) == 12
    # No webhook worker consumes this broker: each first attempt left from the LLM worker.
    wait_for(lambda: all(receiver.for_path(f"/bounded/{i}") for i in range(12)), timeout=30, what="webhooks")
    for i, job_id in enumerate(ids):
        deliveries = receiver.for_path(f"/bounded/{i}")
        assert len(deliveries) == 1
        assert deliveries[0].json()["data"]["id"] == job_id
