"""Bulk jobs through the providers' batch APIs, end to end: a real LLM worker process (which
parks bulk jobs for a batch and runs every retry and hand-back by the normal path), the real
Postgres and Redis, the simulator's OpenAI Batch API and Anthropic Message Batches API reached
by the official SDKs over HTTP, and the provider-batch steps run here as beat would run them (so a
test can stop a run between two steps).

The module's worker reads a providers file that turns batching on and prices its own models, on
the Redis database ``LLMQ_TEST_PROVBATCH_REDIS_URL`` (default: db 7 of the session's Redis), so no
other worker takes its jobs."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from llmq.api.app import create_app
from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.tables import Attempt, Job, ProviderBatch, Tenant
from llmq.models.tenants import create_key
from llmq.tasks.provider_batches import gather_due, run_provider_batches
from llmq.tasks.runtime import WorkerRuntime
from llmq.tasks.sweep import sweep
from llmq.workers.budgets import Scope, period_of, to_units, to_usd, worst_case_units
from llmq.workers.providers.batch_clients import AnthropicBatchApi, OpenAIBatchApi
from llmq.workers.tokens import estimate_input_tokens
from tests.integration.conftest import SimulatorControl
from tests.integration.services import (
    celery_worker_argv,
    settings_env,
    start_llm_worker,
    start_process,
    stop_process,
    wait_for,
)

RUN = uuid.uuid4().hex[:6]
OPENAI = f"openai/pb-{RUN}"
ANTHROPIC = f"anthropic/claude-pb-{RUN}"
SURFACE = {"openai": f"openai/pb-surface-{RUN}", "anthropic": f"anthropic/claude-pb-surface-{RUN}"}
BAD_JSON = f"openai/pb-badjson-{RUN}"
FINAL = {"completed", "failed", "cancelled"}
# $10 / $30 per million tokens standard, so $5 / $15 at the batch price.
PRICES = "input_usd_per_mtok = 10\noutput_usd_per_mtok = 30\n"


def _providers_file(path: Path) -> Path:
    path.write_text(
        f"""
[provider_batches]
enabled = true
min_jobs = 1
max_wait_s = 0
poll_interval_s = 0
fallback_after_s = 600
lease_s = 60
step_timeout_s = 0.5

[models."{OPENAI}"]
{PRICES}
[models."{ANTHROPIC}"]
{PRICES}
[models."{BAD_JSON}"]
{PRICES}
[models."openai/pb-budget-{RUN}"]
{PRICES}
"""
    )
    return path


@pytest.fixture(scope="module")
def pb_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    providers = _providers_file(tmp_path_factory.mktemp("pb-providers") / "providers.toml")
    redis_url = (
        os.environ.get("LLMQ_TEST_PROVBATCH_REDIS_URL") or settings.broker_url.rsplit("/", 1)[0] + "/7"
    )
    return settings.model_copy(
        update={"redis_url": redis_url, "providers_file": providers, "provider_timeout_s": 10.0}
    )


@pytest.fixture(scope="module")
def pb_worker(pb_settings: Settings, database: Database, simulator: str, logs_dir: Path) -> Iterator[None]:
    client = redis.Redis.from_url(pb_settings.broker_url)
    client.flushdb()
    client.close()
    env = {"LLMQ_PROVIDERS_FILE": str(pb_settings.providers_file)}
    proc = start_llm_worker(pb_settings, f"pb-{RUN}@127.0.0.1", logs_dir / "pb-worker.log", env)
    try:
        yield
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def pb_app(pb_settings: Settings, pb_worker: None) -> Iterator[Flask]:
    app = create_app(pb_settings)
    app.testing = True
    yield app
    app.extensions["llmq.db"].dispose()


@pytest.fixture(scope="module")
def rt(pb_settings: Settings, pb_worker: None) -> Iterator[WorkerRuntime]:
    """The runtime the beat task uses, in this process: the steps run here."""
    runtime = WorkerRuntime(pb_settings)
    yield runtime
    runtime.close()


@pytest.fixture
def auth(database: Database) -> dict[str, str]:
    with database.transaction() as session:
        issued = create_key(session, tenant_name=f"pb-{uuid.uuid4().hex[:8]}", now=utcnow(), tier="unlimited")
    return {"Authorization": f"Bearer {issued.api_key}"}


def _submit_bodies(
    client: FlaskClient, auth: dict[str, str], model: str, bodies: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """Each body as a bulk job of ``model`` (a body may say otherwise); the job ids by name."""
    ids = {}
    for name, body in bodies.items():
        response = client.post("/v1/jobs", json={"model": model, "priority": "bulk", **body}, headers=auth)
        assert response.status_code == 202, response.get_json()
        ids[name] = response.get_json()["id"]
    return ids


def _submit(
    client: FlaskClient, auth: dict[str, str], model: str, n: int, priority: str = "bulk"
) -> list[str]:
    bodies = {
        str(i): {"prompt": f"summarise report {i}", "priority": priority, "max_tokens": 12} for i in range(n)
    }
    return list(_submit_bodies(client, auth, model, bodies).values())


def _jobs(database: Database, ids: list[str]) -> dict[str, Job]:
    with database.session() as session:
        jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}
        session.expunge_all()
    return jobs


def _attempts(database: Database, job_id: str) -> list[Attempt]:
    with database.session() as session:
        rows = list(session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)))
        session.expunge_all()
    return rows


def _parked(database: Database, ids: list[str]) -> None:
    wait_for(
        lambda: all(j.wait_reason == "provider_batch" for j in _jobs(database, ids).values()),
        timeout=30,
        what="the bulk jobs to be parked for a provider batch",
    )


def _run_until_final(
    rt: WorkerRuntime, database: Database, ids: list[str], timeout: float = 60
) -> dict[str, Job]:
    def done() -> dict[str, Job] | None:
        run_provider_batches(rt)
        jobs = _jobs(database, ids)
        return jobs if all(j.status in FINAL for j in jobs.values()) else None

    result: dict[str, Job] = wait_for(done, timeout=timeout, interval=0.2, what="the jobs to end")
    return result


def _sim_batches(sim_url: str, model: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = httpx.get(f"{sim_url}/_sim/batches", params={"model": model}).json()["data"]
    return data


def _half_sent(database: Database, ids: list[str]) -> bool:
    jobs = _jobs(database, ids)
    assert all(j.status == "processing" for j in jobs.values())
    (batch_id,) = {j.provider_batch_id for j in jobs.values()}
    with database.session() as session:
        row = session.get(ProviderBatch, batch_id)
        return row is not None and row.state == "sending" and row.remote_id is None


def _public(client: FlaskClient, auth: dict[str, str], job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=auth).get_json()
    return body


def _standard_cost(job: Job) -> Decimal:
    return (Decimal(job.prompt_tokens or 0) * 10 + Decimal(job.completion_tokens or 0) * 30) / 1_000_000


@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC], ids=["openai", "anthropic"])
def test_bulk_jobs_go_by_provider_batch_costed_at_half_price(
    pb_app: Flask, rt: WorkerRuntime, database: Database, simulator: str, auth: dict[str, str], model: str
) -> None:
    client = pb_app.test_client()
    ids = _submit(client, auth, model, 3)
    _parked(database, ids)
    jobs = _run_until_final(rt, database, ids)
    (batch,) = _sim_batches(simulator, model.split("/", 1)[1])
    assert sorted(batch["custom_ids"]) == sorted(ids)  # one provider batch carried all three
    for job_id, job in jobs.items():
        assert job.status == "completed" and job.via_batch and job.result_text
        standard = _standard_cost(job)
        assert job.cost_usd == standard / 2 and job.batch_saved_usd == standard / 2
        (attempt,) = _attempts(database, job_id)
        assert attempt.outcome == "success" and attempt.cost_usd == job.cost_usd
        assert attempt.worker == f"provider-batch:{job.provider_batch_id}"
        public = _public(client, auth, job_id)
        assert public["via_batch"] is True and public["batch_saved_usd"] == float(standard / 2)
        assert public["usage"]["completion_tokens"] == job.completion_tokens and job.completion_tokens
    with database.session() as session:
        row = session.get(ProviderBatch, next(iter(jobs.values())).provider_batch_id)
        assert (
            row is not None and row.state == "ended" and row.remote_id == batch["id"] and row.job_count == 3
        )


LOOKUP = {
    "type": "object",
    "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
    "required": ["sku", "quantity"],
}
TOOLS = [{"type": "function", "function": {"name": "check_stock", "parameters": LOOKUP}}]
INVOICE = {
    "type": "object",
    "properties": {"number": {"type": "string"}, "total": {"type": "number", "minimum": 0}},
    "required": ["number", "total"],
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "invoice", "schema": INVOICE, "strict": True}}
PIXEL = (  # a 1x1 PNG
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKm"
    "MIQAAAABJRU5ErkJggg=="
)
QUESTION = "What is on this receipt?"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_tools_json_output_and_images_go_by_batch_and_come_back_as_from_a_call(
    pb_app: Flask, rt: WorkerRuntime, database: Database, simulator: str, auth: dict[str, str], provider: str
) -> None:
    model = SURFACE[provider]
    client = pb_app.test_client()
    ids = _submit_bodies(
        client,
        auth,
        model,
        {
            "tools": {
                "messages": [{"role": "user", "content": "Is item AB-1 in stock?"}],
                "tools": TOOLS,
                "tool_choice": "required",
            },
            "json": {"prompt": "Invoice 7, please", "response_format": JSON_SCHEMA},
            "image": {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": QUESTION},
                            {"type": "image_url", "image_url": {"url": PIXEL}},
                        ],
                    }
                ]
            },
            "text": {"prompt": QUESTION},
        },
    )
    _parked(database, list(ids.values()))
    _run_until_final(rt, database, list(ids.values()))
    (batch,) = _sim_batches(simulator, model.split("/", 1)[1])
    assert sorted(batch["custom_ids"]) == sorted(ids.values())  # every kind went in the batch
    public = {name: _public(client, auth, job_id) for name, job_id in ids.items()}
    assert {name: (p["status"], p["via_batch"]) for name, p in public.items()} == {
        name: ("completed", True) for name in ids
    }
    tools = public["tools"]["result"]
    assert tools["finish_reason"] == "tool_calls" and tools["text"] == ""
    [call] = tools["tool_calls"]
    assert call["type"] == "function" and call["id"] and call["function"]["name"] == "check_stock"
    jsonschema.validate(json.loads(call["function"]["arguments"]), LOOKUP)
    jsonschema.validate(json.loads(public["json"]["result"]["text"]), INVOICE)
    assert public["json"]["result"]["tool_calls"] is None
    # the image reached the provider: it counted as prompt tokens, and the text is the answer to it
    assert public["image"]["usage"]["prompt_tokens"] == public["text"]["usage"]["prompt_tokens"] + 85
    assert public["image"]["result"]["text"].startswith(f"Simulated answer to: {QUESTION}")


def test_a_line_whose_answer_misses_its_schema_is_retried_by_the_normal_path_and_billed_at_batch_price(
    pb_app: Flask, rt: WorkerRuntime, database: Database, sim: SimulatorControl, auth: dict[str, str]
) -> None:
    bare = BAD_JSON.split("/", 1)[1]
    sim.script(bare, [{"fault": "invalid_json"}])  # the batch's line; the retry is answered well
    client = pb_app.test_client()
    ids = _submit_bodies(
        client, auth, BAD_JSON, {"json": {"prompt": "Invoice 8", "response_format": JSON_SCHEMA}}
    )
    _parked(database, list(ids.values()))
    (job,) = _run_until_final(rt, database, list(ids.values())).values()
    assert job.status == "completed" and not job.via_batch and job.provider_batch_id is not None
    jsonschema.validate(json.loads(job.result_text or ""), INVOICE)
    first, second = _attempts(database, job.id)
    assert first.worker and first.worker.startswith("provider-batch:")
    assert (first.outcome, first.error_type) == ("retryable_error", "invalid_json_output")
    billed = (Decimal(first.prompt_tokens or 0) * 10 + Decimal(first.completion_tokens or 0) * 30) / 1_000_000
    assert first.completion_tokens and first.cost_usd == billed / 2  # the batch price of what it billed
    assert second.outcome == "success" and not (second.worker or "").startswith("provider-batch:")
    assert len(_sim_batches(sim.url, bare)) == 1


def test_jobs_with_a_budget_go_by_batch_reserved_at_the_batch_price_and_never_overspend(
    pb_app: Flask, rt: WorkerRuntime, database: Database, simulator: str
) -> None:
    """A budget with room for two lines' worst case at the batch price, four bulk jobs: two go
    in the batch; the other two go back to the normal path, whose budget stage refuses them (the
    standard price's worst case is twice the batch one). Every hold ends: the spend is exactly
    what the two lines cost, nothing stays held."""
    model = f"openai/pb-budget-{RUN}"
    prompts = [f"summarise report {i}" for i in range(4)]
    price = rt.prices.price(model)
    assert price is not None
    worst = max(
        worst_case_units(price.batch(), estimate_input_tokens([{"role": "user", "content": p}]), 12)
        for p in prompts
    )
    budget = worst * 2 + worst // 2
    with database.transaction() as session:
        issued = create_key(session, tenant_name=f"pb-budget-{RUN}", now=utcnow(), tier="unlimited")
        session.execute(update(Tenant).where(Tenant.id == issued.tenant_id).values(budget_usd=to_usd(budget)))
    auth = {"Authorization": f"Bearer {issued.api_key}"}
    client = pb_app.test_client()
    ids = _submit(client, auth, model, 4)
    _parked(database, ids)
    jobs = _run_until_final(rt, database, ids)
    by_batch = [j for j in jobs.values() if j.status == "completed"]
    refused = [_public(client, auth, j.id) for j in jobs.values() if j.status != "completed"]
    assert len(by_batch) == 2 and all(j.via_batch for j in by_batch)
    assert [(j["status"], j["error"]["type"]) for j in refused] == [("failed", "budget_exceeded")] * 2
    (batch,) = _sim_batches(simulator, model.split("/", 1)[1])
    assert sorted(batch["custom_ids"]) == sorted(j.id for j in by_batch)  # only what fitted was sent
    spent = sum(to_units(j.cost_usd or 0) for j in by_batch)
    scope = Scope("tenant", issued.tenant_id, budget)
    assert rt.budgets.balance(scope, period_of("month", utcnow())) == (spent, 0, True)
    assert 0 < spent <= budget


def test_interactive_jobs_never_go_by_batch(
    pb_app: Flask, rt: WorkerRuntime, database: Database, simulator: str, auth: dict[str, str]
) -> None:
    model = f"openai/pb-interactive-{RUN}"
    client = pb_app.test_client()
    ids = _submit(client, auth, model, 2, priority="interactive")
    jobs = _run_until_final(rt, database, ids)
    assert all(
        j.status == "completed" and not j.via_batch and j.provider_batch_id is None for j in jobs.values()
    )
    assert _sim_batches(simulator, model.split("/", 1)[1]) == []


def test_failed_lines_are_retried_by_the_normal_path(
    pb_app: Flask, rt: WorkerRuntime, database: Database, sim: SimulatorControl, auth: dict[str, str]
) -> None:
    model = f"pb-partial-{RUN}"
    sim.script(model, [{"fault": "500"}, {"fault": "429", "retry_after": 0}])  # the first two lines
    client = pb_app.test_client()
    ids = _submit(client, auth, f"openai/{model}", 4)
    _parked(database, ids)
    jobs = _run_until_final(rt, database, ids)
    assert all(j.status == "completed" for j in jobs.values())
    by_batch = [j for j in jobs.values() if j.via_batch]
    retried = [j for j in jobs.values() if not j.via_batch]
    assert len(by_batch) == 2 and len(retried) == 2
    for job in retried:
        first, second = _attempts(database, job.id)
        assert (
            first.outcome == "retryable_error" and first.worker and first.worker.startswith("provider-batch:")
        )
        assert second.outcome == "success" and not (second.worker or "").startswith("provider-batch:")
        assert job.provider_batch_id is not None and job.batch_saved_usd is None
    assert len(_sim_batches(sim.url, model)) == 1  # the retries went by the normal path, not a batch


def test_an_expired_provider_batch_hands_its_unfinished_jobs_to_the_normal_path(
    pb_app: Flask, rt: WorkerRuntime, database: Database, simulator: str, auth: dict[str, str]
) -> None:
    model = f"pb-expiry-{RUN}"
    httpx.post(f"{simulator}/_sim/batches", json={"model": f"claude-{model}", "expire_after_lines": 1})
    client = pb_app.test_client()
    ids = _submit(client, auth, f"anthropic/claude-{model}", 3)
    _parked(database, ids)
    jobs = _run_until_final(rt, database, ids)
    assert all(j.status == "completed" for j in jobs.values())
    assert sum(j.via_batch for j in jobs.values()) == 1
    for job in (j for j in jobs.values() if not j.via_batch):
        first, second = _attempts(database, job.id)
        assert (first.outcome, first.error_type) == ("interrupted", "batch_expired")
        assert second.outcome == "success"
    (batch,) = _sim_batches(simulator, f"claude-{model}")
    assert batch["status"] == "ended"


def test_a_sender_that_dies_after_openai_took_the_batch_loses_nothing_and_sends_once(
    pb_app: Flask,
    rt: WorkerRuntime,
    database: Database,
    simulator: str,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = f"pb-crash-{RUN}"
    client = pb_app.test_client()
    ids = _submit(client, auth, f"openai/{model}", 3)
    _parked(database, ids)
    assert gather_due(rt) == 1  # a run that stops right after gathering ...
    real_create = OpenAIBatchApi.create

    async def create_then_die(self: OpenAIBatchApi, *args: Any) -> Any:
        await real_create(self, *args)  # ... and the next one, after OpenAI accepted the batch
        raise RuntimeError("the sender died before recording the batch's id")

    monkeypatch.setattr(OpenAIBatchApi, "create", create_then_die)
    run_provider_batches(rt)  # the step fails: the batch stays half-sent, its id not recorded
    monkeypatch.undo()
    assert _half_sent(database, ids)
    time.sleep(0.6)  # past step_timeout_s: the next run takes the half-sent batch over
    jobs = _run_until_final(rt, database, ids)
    (batch,) = _sim_batches(simulator, model)  # found by its metadata, never created twice
    assert sorted(batch["custom_ids"]) == sorted(ids)
    assert all(j.status == "completed" and j.via_batch for j in jobs.values())
    assert all(len(_attempts(database, job_id)) == 1 for job_id in ids)


def test_a_sender_that_dies_after_anthropic_took_the_batch_never_sends_a_job_twice(
    pb_app: Flask,
    rt: WorkerRuntime,
    database: Database,
    simulator: str,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = f"claude-pb-crash-{RUN}"
    client = pb_app.test_client()
    ids = _submit(client, auth, f"anthropic/{model}", 2)
    _parked(database, ids)
    real_create = AnthropicBatchApi.create

    async def create_then_die(self: AnthropicBatchApi, *args: Any) -> Any:
        await real_create(self, *args)
        raise RuntimeError("the sender died before recording the batch's id")

    monkeypatch.setattr(AnthropicBatchApi, "create", create_then_die)
    run_provider_batches(rt)  # the step fails: the batch stays half-sent, its id not recorded
    monkeypatch.undo()
    assert _half_sent(database, ids)
    time.sleep(0.6)
    jobs = _run_until_final(rt, database, ids)
    # Anthropic cannot say whether it has the batch: the jobs ran by the normal path, and no job
    # went in a second batch.
    assert len(_sim_batches(simulator, model)) == 1
    assert all(j.status == "completed" and not j.via_batch for j in jobs.values())
    for job_id in ids:
        first, second = _attempts(database, job_id)
        assert (first.outcome, first.error_type) == ("interrupted", "batch_not_sent")
        assert second.outcome == "success"


def test_the_simulators_batch_apis_answer_the_unmodified_sdks(simulator: str) -> None:
    """Cancel, list, file retrieval, validation failure: the parts the routing above does not use."""
    import anthropic
    import openai

    oa = openai.OpenAI(api_key="sk-test", base_url=f"{simulator}/v1", max_retries=0)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": f"sdk-{RUN}", "messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
    uploaded = oa.files.create(file=("in.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
    assert oa.files.retrieve(uploaded.id).bytes == len(json.dumps(line)) + 1
    httpx.post(f"{simulator}/_sim/batches", json={"model": f"sdk-{RUN}", "processing_s": 3600})
    batch = oa.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "in_progress" and batch.request_counts and batch.request_counts.total == 1
    assert batch.id in [b.id for b in oa.batches.list(limit=10).data]
    cancelled = oa.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.error_file_id and cancelled.output_file_id is None
    (error_line,) = [json.loads(raw) for raw in oa.files.content(cancelled.error_file_id).text.splitlines()]
    assert error_line["custom_id"] == "a" and error_line["error"]["code"] == "batch_cancelled"
    bad = oa.files.create(file=("bad.jsonl", b'{"custom_id": "a"}\nnot json\n'), purpose="batch")
    failed = oa.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert failed.status == "failed" and failed.errors and failed.errors.data
    with pytest.raises(openai.NotFoundError):
        oa.batches.retrieve("batch_nope")

    an = anthropic.Anthropic(api_key="sk-test", base_url=simulator, max_retries=0)
    params: Any = {
        "model": f"claude-sdk-{RUN}",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    }
    httpx.post(f"{simulator}/_sim/batches", json={"model": f"claude-sdk-{RUN}", "processing_s": 3600})
    created = an.messages.batches.create(requests=[{"custom_id": "a", "params": params}])
    assert created.processing_status == "in_progress" and created.request_counts.processing == 1
    with pytest.raises(anthropic.AnthropicError):
        an.messages.batches.results(created.id)  # no results before it ends
    assert an.messages.batches.cancel(created.id).processing_status == "ended"
    (result,) = list(an.messages.batches.results(created.id))
    assert (result.custom_id, result.result.type) == ("a", "canceled")
    with pytest.raises(anthropic.BadRequestError):
        an.messages.batches.create(requests=[{"custom_id": "not ok!", "params": params}])


def test_a_bulk_job_no_batch_took_in_time_runs_by_the_normal_path(
    pb_app: Flask, rt: WorkerRuntime, database: Database, simulator: str, auth: dict[str, str]
) -> None:
    model = f"pb-late-{RUN}"
    client = pb_app.test_client()
    ids = _submit(client, auth, f"openai/{model}", 2)
    _parked(database, ids)
    with database.transaction() as session:  # fallback_after_s (600 s) has passed, no batch came
        session.execute(
            update(Job)
            .where(Job.id.in_(ids))
            .values(
                created_at=utcnow() - timedelta(seconds=601), next_attempt_at=utcnow() - timedelta(seconds=1)
            )
        )
    sweep(rt)  # sends the jobs whose wait is over; the worker runs them
    jobs = wait_for(
        lambda: (found := _jobs(database, ids)) and all(j.status in FINAL for j in found.values()) and found,
        timeout=30,
        what="the late bulk jobs to complete",
    )
    assert all(
        j.status == "completed" and not j.via_batch and j.provider_batch_id is None for j in jobs.values()
    )
    assert _sim_batches(simulator, model) == []


def test_a_poller_gone_past_the_lease_hands_the_jobs_back_and_their_late_results_are_discarded(
    pb_app: Flask, rt: WorkerRuntime, database: Database, simulator: str, auth: dict[str, str]
) -> None:
    model = f"pb-lease-{RUN}"
    httpx.post(f"{simulator}/_sim/batches", json={"model": model, "processing_s": 2})
    client = pb_app.test_client()
    ids = _submit(client, auth, f"openai/{model}", 2)
    _parked(database, ids)
    run_provider_batches(rt)  # gathered and submitted
    assert all(j.status == "processing" for j in _jobs(database, ids).values())
    with database.transaction() as session:  # no poll for lease_s: the leases run out
        session.execute(
            update(Job).where(Job.id.in_(ids)).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    sweep(rt)
    jobs = wait_for(
        lambda: (found := _jobs(database, ids)) and all(j.status in FINAL for j in found.values()) and found,
        timeout=30,
        what="the handed-back jobs to complete by the normal path",
    )
    batch_id = next(iter(jobs.values())).provider_batch_id

    def batch_ended() -> bool:
        run_provider_batches(rt)
        with database.session() as session:
            row = session.get(ProviderBatch, batch_id)
            return row is not None and row.state == "ended"

    wait_for(batch_ended, timeout=30, interval=0.2, what="the provider batch to end")
    for job_id, job in _jobs(database, ids).items():
        assert job.status == "completed" and not job.via_batch
        lost, answered = _attempts(database, job_id)
        assert (lost.outcome, answered.outcome) == ("lost", "success")  # the batch's answer was not written


def test_celery_beat_runs_the_provider_batches_on_its_own(
    pb_app: Flask, pb_settings: Settings, database: Database, logs_dir: Path, auth: dict[str, str]
) -> None:
    """The wiring: beat schedules ``llmq.provider_batches`` and a worker of the webhooks queue runs
    it, with nothing run from here."""
    name = f"pb-beat-{RUN}@127.0.0.1"
    env = {
        **settings_env(pb_settings),
        "LLMQ_PROVIDERS_FILE": str(pb_settings.providers_file),
        "LLMQ_PROVIDER_BATCH_INTERVAL_S": "0.5",
    }
    proc = start_process(
        celery_worker_argv(name, concurrency=4, beat_schedule=logs_dir / f"pb-beat-{RUN}"),
        env,
        logs_dir / "pb-beat.log",
    )
    try:
        model = f"openai/pb-beat-{RUN}"
        ids = _submit(pb_app.test_client(), auth, model, 2)
        jobs = wait_for(
            lambda: (
                (found := _jobs(database, ids)) and all(j.status in FINAL for j in found.values()) and found
            ),
            timeout=90,
            interval=0.3,
            what="beat to send, poll and write the provider batch",
        )
        assert all(j.status == "completed" and j.via_batch for j in jobs.values())
    finally:
        stop_process(proc)
