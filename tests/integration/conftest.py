"""Integration fixtures: the machine's real Postgres and Redis, the provider simulator and a
Celery worker as real processes, a Flask client over the real database and broker, and a local
webhook receiver. Nothing here is mocked.

Environment: ``LLMQ_TEST_DATABASE_URL`` (default postgres on 127.0.0.1, database llmq_test) and
``LLMQ_TEST_REDIS_URL`` (default redis://127.0.0.1:6379/15).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from llmq.api.app import create_app
from llmq.config.settings import OpenAICompatibleEndpoint, Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.migrate import recreate_database
from llmq.models.tenants import IssuedKey, create_key
from llmq.tasks.app import configure_celery
from tests.integration.services import (
    WebhookReceiver,
    celery_worker_argv,
    free_port,
    settings_env,
    simulator_ready,
    start_process,
    stop_process,
    wait_for,
)

DATABASE_URL = os.environ.get(
    "LLMQ_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/llmq_test"
)
REDIS_URL = os.environ.get("LLMQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def settings() -> Settings:
    simulator_port = free_port()
    simulator_url = f"http://127.0.0.1:{simulator_port}"
    return Settings(
        database_url=DATABASE_URL,
        redis_url=REDIS_URL,
        openai_api_key=None,
        anthropic_api_key=None,
        simulator_url=simulator_url,
        simulator_port=simulator_port,
        extra_providers={"local": OpenAICompatibleEndpoint(base_url=f"{simulator_url}/v1")},
        provider_timeout_s=2.0,
        retry_base_s=0.2,
        retry_cap_s=1.0,
        max_attempts=5,
        webhook_retry_schedule=[0, 1, 1, 2],
        webhook_timeout_s=3.0,
        sweep_interval_s=1.0,
        lease_s=6.0,
        webhook_allow_private=True,
        progress_interval_s=0.3,
        worker_concurrency=20,
        files_dir=Path(tempfile.mkdtemp(prefix="llmq-files-")),  # API and workers share it
        batch_tick_s=1.0,
        log_json=True,
        log_level="INFO",
    )


@pytest.fixture(scope="session")
def database(settings: Settings) -> Iterator[Database]:
    recreate_database(settings.database_url)  # built by running the migrations
    client = redis.Redis.from_url(settings.broker_url)
    client.flushdb()
    client.close()
    db = Database(settings.database_url)
    yield db
    db.dispose()


@pytest.fixture(scope="module", autouse=True)
def session_broker(settings: Settings) -> None:
    """Each module starts with this process's Celery app on the session's broker.

    ``create_app`` points the process-wide Celery app at its settings (Flask's ``celery_init_app``
    pattern), and modules with a stack of their own (another Redis database) make apps of their
    own; the session's Flask app, made once by whichever module needs it first, publishes through
    that same Celery app (a cancel's ``job.cancelled``, a broker-down submit's re-send). Without
    this, a module after one on another broker would publish there and wait for the sweeper."""
    configure_celery(settings)


@pytest.fixture(scope="session")
def simulator(settings: Settings, logs_dir: Path) -> Iterator[str]:
    proc = start_process(
        [sys.executable, "-m", "llmq.simulator", "--port", str(settings.simulator_port), "--latency", "0.05"],
        settings_env(settings),
        logs_dir / "simulator.log",
    )
    try:
        wait_for(lambda: simulator_ready(settings.simulator_url), what="the simulator")
        yield settings.simulator_url
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def worker(settings: Settings, database: Database, simulator: str, logs_dir: Path) -> Iterator[str]:
    """One real Celery worker process (threads pool) on both queues, with beat embedded (-B)
    so the sweeper runs too."""
    name = f"test-{uuid.uuid4().hex[:6]}@127.0.0.1"
    proc = start_process(
        celery_worker_argv(
            name,
            concurrency=settings.worker_concurrency,
            events=True,
            beat_schedule=logs_dir / "beat-schedule",
        ),
        settings_env(settings),
        logs_dir / "worker.log",
    )
    app = configure_celery(settings)
    try:
        wait_for(
            lambda: proc.poll() is None and app.control.ping(destination=[name], timeout=0.5),
            timeout=60,
            what="the worker",
        )
        yield name
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def app(settings: Settings, database: Database) -> Iterator[Flask]:
    flask_app = create_app(settings)
    flask_app.testing = True
    yield flask_app
    flask_app.extensions["llmq.db"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def tenant(database: Database) -> IssuedKey:
    """A fresh tenant with its own API key and webhook secret."""
    with database.transaction() as session:
        return create_key(
            session, tenant_name=f"tenant-{uuid.uuid4().hex[:8]}", now=utcnow(), tier="unlimited"
        )


@pytest.fixture
def auth(tenant: IssuedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.api_key}"}


@pytest.fixture(scope="session")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(port=free_port()).start()
    yield receiver
    receiver.stop()


@pytest.fixture
def sim(settings: Settings, simulator: str) -> SimulatorControl:
    return SimulatorControl(simulator)


class SimulatorControl:
    """The simulator's control API (/_sim), for scripting faults and reading counts."""

    def __init__(self, url: str) -> None:
        self.url = url

    def script(self, model: str, steps: list[dict[str, Any]], default: dict[str, Any] | None = None) -> None:
        response = httpx.post(
            f"{self.url}/_sim/script", json={"model": model, "steps": steps, "default": default}
        )
        response.raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_sim/stats").json()

    def requests_for(self, model: str) -> int:
        return int(self.stats()["requests_by_model"].get(model, 0))


def unique_model(prefix: str = "test") -> str:
    """A model name nobody else uses, so a scripted fault touches one test only."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for_status(
    client: FlaskClient, auth: dict[str, str], job_id: str, statuses: set[str], timeout: float = 30
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
        return body if body["status"] in statuses else None

    return wait_for(check, timeout=timeout, interval=0.05, what=f"job {job_id} to reach {statuses}")


def settle(seconds: float) -> None:
    """Let time pass so that anything that should NOT happen would have happened."""
    time.sleep(seconds)
