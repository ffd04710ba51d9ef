"""Sentry, proven against a local ingest: an exception in a real API process (``llmq api``,
gunicorn) and one in a real worker task (``llmq worker``) each arrive once, tagged with their
``job_id``, with no prompt, API key or webhook secret anywhere in what was sent.

The exceptions are real faults from outside, not a debug endpoint: a trigger makes Postgres
reject one tenant's writes with an internal error (SQLSTATE XX000, neither an outage nor a
constraint: the kind of error nobody handles), so the API's cancel of that tenant's job and a
worker's claim of it raise as a bug would."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.records import NewJob
from llmq.models.submit import create_job
from llmq.models.tenants import IssuedKey
from llmq.tasks.app import configure_celery
from tests.integration.conftest import SimulatorControl, settle, unique_model
from tests.integration.sentry_ingest import SentryIngest
from tests.integration.services import (
    VENV_BIN,
    free_port,
    settings_env,
    start_llm_worker,
    start_process,
    stop_process,
    wait_for,
)


@pytest.fixture
def ingest() -> Iterator[SentryIngest]:
    server = SentryIngest(port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def api_url(
    settings: Settings, database: Database, ingest: SentryIngest, logs_dir: Path, tmp_path: Path
) -> Iterator[str]:
    port = free_port()
    env = {
        **settings_env(settings),
        "SENTRY_DSN": ingest.dsn,
        "LLMQ_API_PORT": str(port),
        "LLMQ_API_WORKERS": "1",
        "LLMQ_VAR_DIR": str(tmp_path / "var"),
    }
    proc = start_process([str(VENV_BIN / "llmq"), "api"], env, logs_dir / "sentry-api.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, timeout=120, what="the API"
        )
        yield url
    finally:
        stop_process(proc)


class WriteFault:
    """A trigger that fails one tenant's writes to ``jobs`` with an internal error."""

    def __init__(self, database: Database, tenant_id: str, when: str = "TRUE") -> None:
        self.database = database
        self.name = f"llmq_fault_{uuid.uuid4().hex[:8]}"
        self.tenant_id = tenant_id
        self.when = when

    def __enter__(self) -> WriteFault:
        with self.database.transaction() as session:
            session.execute(
                text(
                    f"CREATE FUNCTION {self.name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "RAISE EXCEPTION 'injected fault' USING ERRCODE = 'XX000'; END $$"
                )
            )
            session.execute(
                text(
                    f"CREATE TRIGGER {self.name} BEFORE INSERT OR UPDATE ON jobs FOR EACH ROW "
                    f"WHEN (NEW.tenant_id = '{self.tenant_id}' AND {self.when}) "
                    f"EXECUTE FUNCTION {self.name}()"
                )
            )
        return self

    def __exit__(self, *exc: object) -> None:
        with self.database.transaction() as session:
            session.execute(text(f"DROP TRIGGER IF EXISTS {self.name} ON jobs"))
            session.execute(text(f"DROP FUNCTION IF EXISTS {self.name}()"))


def _secret_free(ingest: SentryIngest, *secrets: str) -> None:
    sent = ingest.all_bytes()
    for secret in secrets:
        assert secret.encode() not in sent, f"{secret[:12]}... reached Sentry"


def _only_event(ingest: SentryIngest, job_id: str) -> dict[str, Any]:
    wait_for(
        lambda: any(e.get("tags", {}).get("job_id") == job_id for e in ingest.events()), what="the event"
    )
    settle(2.0)  # a second report would have arrived by now
    events = [e for e in ingest.events() if e.get("tags", {}).get("job_id") == job_id]
    assert len(events) == 1, events
    return events[0]


def test_an_api_exception_arrives_once_tagged_and_scrubbed(
    api_url: str, ingest: SentryIngest, tenant: IssuedKey, database: Database, sim: SimulatorControl
) -> None:
    prompt = f"my private prompt {uuid.uuid4().hex}"
    auth = {"Authorization": f"Bearer {tenant.api_key}"}
    # A model the simulator holds: should some worker take the job, it is still running.
    model = unique_model("hang")
    sim.script(model, [], default={"fault": "hang"})
    job = httpx.post(
        f"{api_url}/v1/jobs", json={"prompt": prompt, "model": f"openai/{model}"}, headers=auth
    ).json()
    with WriteFault(database, tenant.tenant_id, when="NEW.status = 'cancelled'"):
        # The body repeats the prompt: a request body must not reach Sentry either.
        answer = httpx.post(
            f"{api_url}/v1/jobs/{job['id']}/cancel?note={prompt}", json={"prompt": prompt}, headers=auth
        )
        assert answer.status_code == 500
        assert answer.json()["error"]["type"] == "internal_error"
    assert httpx.post(f"{api_url}/v1/jobs/{job['id']}/cancel", headers=auth).status_code == 200

    event = _only_event(ingest, job["id"])
    assert event["server_name"] == "api"
    assert event["exception"]["values"][-1]["type"] == "InternalError"
    assert event["request"]["method"] == "POST"
    assert event["request"]["url"].endswith(f"/v1/jobs/{job['id']}/cancel")
    assert "Authorization" not in event["request"]["headers"]
    assert ingest.paths and all(p == f"/api/{ingest.project}/envelope/" for p in ingest.paths)
    _secret_free(ingest, prompt, tenant.api_key, tenant.webhook_secret)


def test_a_failed_insert_reports_no_prompt_from_its_sql_parameters(
    api_url: str, ingest: SentryIngest, tenant: IssuedKey, database: Database
) -> None:
    prompt = f"another private prompt {uuid.uuid4().hex}"
    with WriteFault(database, tenant.tenant_id):
        answer = httpx.post(
            f"{api_url}/v1/jobs",
            json={"prompt": prompt},
            headers={"Authorization": f"Bearer {tenant.api_key}"},
        )
    assert answer.status_code == 500
    event = wait_for(lambda: ingest.events(), what="the event")[0]
    value = event["exception"]["values"][-1]["value"]
    assert "injected fault" in value and "[parameters: [Filtered]]" in value
    _secret_free(ingest, prompt, tenant.api_key, tenant.webhook_secret)


def test_a_worker_task_exception_arrives_once_tagged_and_scrubbed(
    settings: Settings, database: Database, ingest: SentryIngest, tenant: IssuedKey, logs_dir: Path
) -> None:
    prompt = f"a worker's private prompt {uuid.uuid4().hex}"
    with database.transaction() as session:  # not enqueued: only our worker's queue gets it
        job, _ = create_job(
            session,
            tenant_id=tenant.tenant_id,
            new=NewJob(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": prompt}]),
            now=utcnow(),
            max_attempts=3,
        )
        job_id = job.id
    queue = f"sentry-{uuid.uuid4().hex[:6]}"
    name = f"{queue}@127.0.0.1"
    worker = start_llm_worker(
        settings, name, logs_dir / "sentry-worker.log", {"SENTRY_DSN": ingest.dsn}, queues=queue
    )
    try:
        with WriteFault(database, tenant.tenant_id):
            configure_celery(settings).send_task("llmq.generate", args=[job_id], queue=queue)
            event = _only_event(ingest, job_id)
    finally:
        stop_process(worker)
    assert event["server_name"] == "worker"
    assert event["exception"]["values"][-1]["type"] == "InternalError"
    assert all("vars" not in f for f in event["exception"]["values"][-1]["stacktrace"]["frames"])
    _secret_free(ingest, prompt, tenant.api_key, tenant.webhook_secret)
