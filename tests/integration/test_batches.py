"""OpenAI's Batch API on llmq, driven by the official ``openai`` SDK, unmodified, over real HTTP:
a real API (``llmq api``, gunicorn), the session's real worker (with beat, so the batch tick
runs), Postgres, Redis and the simulator. Files are uploaded with ``client.files.create``, batches
made, read, cancelled and listed with ``client.batches.*``, results read with
``client.files.content``; lines fail in every way a line can (refused when read, a model that
does not exist, a provider that answers 400), and every custom_id comes back exactly once."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion
from sqlalchemy import func, select, update
from standardwebhooks import Webhook

from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.tables import Job, Tenant
from llmq.models.tenants import IssuedKey, create_key
from tests.integration.conftest import SimulatorControl, unique_model
from tests.integration.services import (
    VENV_BIN,
    WebhookReceiver,
    free_port,
    settings_env,
    start_process,
    stop_process,
    wait_for,
)

MAX_LINES = 10_000
MAX_BYTES = 6 * 1024 * 1024
FINAL = {"completed", "failed", "expired", "cancelled"}


def _start_api(settings: Settings, var: Path, extra: dict[str, str]) -> Iterator[str]:
    port = free_port()
    env = {
        **settings_env(settings),
        "LLMQ_API_PORT": str(port),
        "LLMQ_VAR_DIR": str(var),
        "LLMQ_API_WORKERS": "2",
        "LLMQ_BATCH_MAX_LINES": str(MAX_LINES),
        "LLMQ_BATCH_MAX_FILE_BYTES": str(MAX_BYTES),
        **extra,
    }
    proc = start_process([str(VENV_BIN / "llmq"), "api"], env, var / "api.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(functools.partial(_healthy, url), timeout=60, what="the API")
        yield url
    finally:
        stop_process(proc)


def _healthy(url: str) -> bool:
    return httpx.get(f"{url}/health", timeout=2).status_code == 200


@pytest.fixture(scope="module")
def api(
    settings: Settings, database: Database, worker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    yield from _start_api(settings, tmp_path_factory.mktemp("batch-api"), {})


@pytest.fixture(scope="module")
def short_window_api(
    settings: Settings, database: Database, worker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An API whose "24h" lasts 6 s (a test setting: clients still may only send "24h")."""
    yield from _start_api(
        settings, tmp_path_factory.mktemp("batch-api-short"), {"LLMQ_BATCH_COMPLETION_WINDOW_S": "6"}
    )


def _client(api: str, tenant: IssuedKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api}/v1", api_key=tenant.api_key, timeout=60)


def _hooked(database: Database, tenant: IssuedKey, receiver: WebhookReceiver) -> str:
    """Give the tenant a webhook URL of its own on the receiver; its path."""
    path = f"/batches-{uuid.uuid4().hex[:8]}"
    with database.transaction() as session:
        session.execute(
            update(Tenant).where(Tenant.id == tenant.tenant_id).values(webhook_url=receiver.url(path))
        )
    return path


def _line(custom_id: str, model: str, text: str = "hello", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def _jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def _wait_final(client: openai.OpenAI, batch_id: str, timeout: float) -> Any:
    def done() -> Any:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in FINAL else None

    return wait_for(done, timeout=timeout, interval=0.5, what=f"batch {batch_id} to end")


def _lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]


def _batch_events(
    receiver: WebhookReceiver, path: str, tenant: IssuedKey, count: int = 1
) -> list[dict[str, Any]]:
    wait_for(lambda: len(receiver.for_path(path)) >= count, timeout=30, what="the batch webhook")
    hooks = receiver.for_path(path)
    verifier = Webhook(tenant.webhook_secret)
    return [verifier.verify(hook.body.decode(), hook.headers) for hook in hooks]


def test_a_10000_line_batch_runs_every_line_once_with_the_sdk_unmodified(
    api: str,
    tenant: IssuedKey,
    sim: SimulatorControl,
    database: Database,
    webhook_receiver: WebhookReceiver,
) -> None:
    good = unique_model("batch")  # a bare OpenAI model name: openai/<name> on llmq
    failing = unique_model("batch-400")
    # The first 4 calls meet a 500 (5 in a row would open the model's breaker): those lines are
    # retried, as any job is, and complete.
    sim.script(good, [{"fault": "500", "latency": 0}] * 4, default={"fault": "ok", "latency": 0})
    sim.script(failing, [], default={"fault": "400", "message": "no such thing"})
    path = _hooked(database, tenant, webhook_receiver)
    lines: list[Any] = []
    expected: dict[str, str] = {}  # custom_id → what becomes of it
    for n in range(MAX_LINES):
        custom_id = f"req-{n}"
        if n % 500 == 7:
            lines.append(b'{"custom_id": "broken-' + str(n).encode() + b'", "method": "POST"')  # not JSON
            continue
        if n % 250 == 3:
            lines.append(_line(custom_id, good, max_tokens=0))  # an invalid body
            expected[custom_id] = "invalid_request"
        elif n % 200 == 5:
            lines.append(_line(custom_id, "nosuch/model"))
            expected[custom_id] = "model_not_found"
        elif n % 100 == 1:
            lines.append(_line(custom_id, f"openai/{failing}"))
            expected[custom_id] = "provider_400"
        else:
            lines.append(_line(custom_id, good, f"line {n}", max_tokens=8, temperature=0.5))
            expected[custom_id] = "ok"
    client = _client(api, tenant)

    uploaded = client.files.create(file=("input.jsonl", _jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(_jsonl(lines))
    assert client.files.retrieve(uploaded.id).filename == "input.jsonl"
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"suite": "acceptance"},
    )
    assert batch.status in {"validating", "in_progress"} and batch.metadata == {"suite": "acceptance"}

    done = _wait_final(client, batch.id, timeout=400)
    assert done.status == "completed", done
    ok = sum(1 for v in expected.values() if v == "ok")
    broken = MAX_LINES // 500 + (1 if MAX_LINES % 500 > 7 else 0)
    assert done.request_counts is not None
    assert done.request_counts.total == MAX_LINES
    assert done.request_counts.completed == ok
    assert done.request_counts.failed == MAX_LINES - ok
    assert done.in_progress_at and done.finalizing_at and done.completed_at

    output = _lines_of(client, done.output_file_id)
    errors = _lines_of(client, done.error_file_id)
    assert len(output) == ok and len(errors) == MAX_LINES - ok
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.choices[0].message.content
        assert expected[line["custom_id"]] == "ok"
    seen = [line["custom_id"] for line in output + errors if line["custom_id"] is not None]
    assert len(seen) == len(set(seen)) and set(seen) == set(expected)  # every line exactly once
    by_id = {line["custom_id"]: line for line in errors}
    for custom_id, fate in expected.items():
        if fate == "provider_400":
            assert by_id[custom_id]["response"]["status_code"] == 400
            assert by_id[custom_id]["response"]["body"]["error"]["message"]
        elif fate != "ok":
            assert by_id[custom_id]["response"] is None
            assert by_id[custom_id]["error"]["code"] == fate
    unparsed = [line for line in errors if line["custom_id"] is None]
    assert len(unparsed) == broken and all(line["error"]["code"] == "invalid_json" for line in unparsed)

    with database.session() as session:  # each line that ran is one bulk job of the batch
        jobs = session.scalar(select(func.count()).select_from(Job).where(Job.batch_id == batch.id))
        bulk = session.scalar(
            select(func.count()).select_from(Job).where(Job.batch_id == batch.id, Job.priority == "bulk")
        )
        retried = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.batch_id == batch.id, Job.status == "completed", Job.attempts > 1)
        )
    assert jobs == bulk == sum(1 for v in expected.values() if v in {"ok", "provider_400"})
    assert retried and retried >= 1  # the lines that met a 500 were retried to completion

    (event,) = _batch_events(webhook_receiver, path, tenant)
    assert event["type"] == "batch.completed" and event["data"]["id"] == batch.id
    assert event["data"]["request_counts"]["completed"] == ok


def test_a_batch_whose_every_line_is_refused_fails_and_says_why(
    api: str, tenant: IssuedKey, database: Database, webhook_receiver: WebhookReceiver
) -> None:
    path = _hooked(database, tenant, webhook_receiver)
    client = _client(api, tenant)
    uploaded = client.files.create(
        file=(
            "bad.jsonl",
            _jsonl([_line("a", "nosuch/model"), b"not json", {**_line("c", "m"), "url": "/v1/x"}]),
        ),
        purpose="batch",
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = _wait_final(client, batch.id, timeout=60)
    assert done.status == "failed" and done.failed_at
    assert done.output_file_id is None and done.errors is not None and done.errors.data
    assert [e.line for e in done.errors.data] == [1, 2, 3]
    assert done.request_counts is not None and done.request_counts.failed == 3
    (event,) = _batch_events(webhook_receiver, path, tenant)
    assert event["type"] == "batch.failed" and event["data"]["id"] == batch.id


def test_cancelling_a_running_batch_keeps_what_had_ended(
    api: str,
    tenant: IssuedKey,
    sim: SimulatorControl,
    database: Database,
    webhook_receiver: WebhookReceiver,
) -> None:
    model = unique_model("batch-cancel")
    # The first 40 calls answer; every later one is told to come back in a minute.
    sim.script(model, [{"fault": "ok", "latency": 0}] * 40, default={"fault": "429", "retry_after": 60})
    path = _hooked(database, tenant, webhook_receiver)
    client = _client(api, tenant)
    uploaded = client.files.create(
        file=("cancel.jsonl", _jsonl([_line(f"c-{n}", model) for n in range(200)])), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_for(lambda: _completed(client, batch.id) >= 40, timeout=60, what="40 lines to complete")
    with pytest.raises(openai.ConflictError):  # a running batch still reads its input
        client.files.delete(uploaded.id)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in {"cancelling", "cancelled"} and cancelling.cancelling_at
    done = _wait_final(client, batch.id, timeout=60)
    assert done.status == "cancelled" and done.cancelled_at
    output, errors = _lines_of(client, done.output_file_id), _lines_of(client, done.error_file_id)
    assert len(output) == 40
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"c-{n}" for n in range(200))
    assert any(line["error"] and line["error"]["code"] == "batch_cancelled" for line in errors)
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (200, 40)
    assert client.batches.cancel(batch.id).status == "cancelled"  # a second cancel changes nothing
    (event,) = _batch_events(webhook_receiver, path, tenant)
    assert event["type"] == "batch.cancelled"


def _completed(client: openai.OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    return counts.completed if counts is not None else 0


def test_a_batch_past_its_window_expires_with_its_partial_output(
    short_window_api: str,
    tenant: IssuedKey,
    sim: SimulatorControl,
    database: Database,
    webhook_receiver: WebhookReceiver,
) -> None:
    model = unique_model("batch-expire")
    sim.script(model, [{"fault": "ok", "latency": 0}] * 15, default={"fault": "429", "retry_after": 60})
    path = _hooked(database, tenant, webhook_receiver)
    client = _client(short_window_api, tenant)
    uploaded = client.files.create(
        file=("expire.jsonl", _jsonl([_line(f"e-{n}", model) for n in range(100)])), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.expires_at is not None and batch.expires_at - batch.created_at <= 7
    done = _wait_final(client, batch.id, timeout=60)
    assert done.status == "expired" and done.expired_at
    output, errors = _lines_of(client, done.output_file_id), _lines_of(client, done.error_file_id)
    assert len(output) == 15 and len(errors) == 85
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"e-{n}" for n in range(100))
    with database.session() as session:  # no line job is left to run
        left = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.batch_id == batch.id, Job.status.in_(["queued", "processing"]))
        )
        deadlines = session.scalars(select(Job.deadline_at).where(Job.batch_id == batch.id)).all()
    assert left == 0
    # A line's deadline is the batch's window (a little past it), not a job's default hour.
    assert batch.expires_at is not None
    assert all(d is not None and d.timestamp() >= batch.expires_at for d in deadlines)
    (event,) = _batch_events(webhook_receiver, path, tenant)
    assert event["type"] == "batch.expired" and event["data"]["status"] == "expired"


def test_batches_list_pages_newest_first(
    api: str, tenant: IssuedKey, sim: SimulatorControl, database: Database
) -> None:
    model = unique_model("batch-list")
    sim.script(model, [], default={"fault": "ok", "latency": 0})
    client = _client(api, tenant)
    uploaded = client.files.create(file=("one.jsonl", _jsonl([_line("x", model)])), purpose="batch")
    made = [
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    assert [b.id for b in client.batches.list(limit=2)] == made[::-1]  # the SDK follows `after`
    files = client.files.list()
    assert uploaded.id in [f.id for f in files.data]
    done = _wait_final(client, made[0], timeout=60)
    assert done.status == "completed"
    with pytest.raises(openai.ConflictError):  # an ended batch cannot be cancelled
        client.batches.cancel(made[0])
    assert done.output_file_id is not None
    with database.transaction() as session:  # another tenant sees none of it: 404, as unknown ids
        other = _client(api, create_key(session, tenant_name=f"other-{uuid.uuid4().hex[:8]}", now=utcnow()))
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(made[0])
    with pytest.raises(openai.NotFoundError):
        other.files.content(done.output_file_id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(made[1])
    assert other.batches.list().data == []
    assert client.files.delete(done.output_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.content(done.output_file_id)


def test_upload_limits_and_bad_requests_answer_openai_shaped_400s(api: str, tenant: IssuedKey) -> None:
    client = _client(api, tenant)
    too_many = _jsonl([_line(f"m-{n}", "gpt-4o-mini") for n in range(MAX_LINES + 1)])
    with pytest.raises(openai.BadRequestError) as many:
        client.files.create(file=("many.jsonl", too_many), purpose="batch")
    assert "lines" in many.value.message
    too_big = _jsonl([_line("big", "gpt-4o-mini", "x" * (MAX_BYTES + 10))])
    with pytest.raises(openai.BadRequestError) as big:
        client.files.create(file=("big.jsonl", too_big), purpose="batch")
    assert "bytes" in big.value.message
    body = big.value.body
    assert isinstance(body, dict) and {"message", "type", "param", "code"} <= set(body)
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-doesnotexist")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    window = httpx.post(  # only "24h" is a window (the SDK's types would not let us send another)
        f"{api}/v1/batches",
        json={"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "1h"},
        headers={"Authorization": f"Bearer {tenant.api_key}"},
    )
    assert window.status_code == 400 and window.json()["error"]["param"] == "completion_window"
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_doesnotexist")
