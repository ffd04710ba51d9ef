"""``/v1/chat/completions`` through the official ``openai`` SDK, unmodified, over real HTTP: a real
``llmq api`` (gunicorn), the session's Celery worker and the simulator. Each answer is a job: the
same job is read back at ``/v1/jobs/<id>`` with the same text, usage and cost."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pydantic
import pytest

from llmq.api.app import create_app
from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.tables import Job
from llmq.models.tenant_admin import update_tenant
from llmq.models.tenants import IssuedKey, create_key
from tests.integration.conftest import SimulatorControl, unique_model
from tests.integration.otlp_collector import OtlpCollector
from tests.integration.services import (
    VENV_BIN,
    WebhookReceiver,
    free_port,
    settings_env,
    start_process,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(
    settings: Settings, database: Database, worker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    var = tmp_path_factory.mktemp("chat-api")
    env = {
        **settings_env(settings),
        "LLMQ_API_PORT": str(port),
        "LLMQ_API_WORKERS": "1",
        "LLMQ_VAR_DIR": str(var),
    }
    proc = start_process([str(VENV_BIN / "llmq"), "api"], env, Path(var) / "api.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, timeout=60, what="the API")
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def traced_api(
    settings: Settings, database: Database, worker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, OtlpCollector]]:
    """Another ``llmq api``, exporting its spans to an in-process OTLP collector."""
    collector = OtlpCollector(port=free_port()).start()
    port = free_port()
    var = tmp_path_factory.mktemp("chat-traced-api")
    env = {
        **settings_env(settings),
        "LLMQ_API_PORT": str(port),
        "LLMQ_API_WORKERS": "1",
        "LLMQ_VAR_DIR": str(var),
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    proc = start_process([str(VENV_BIN / "llmq"), "api"], env, Path(var) / "api.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, timeout=60, what="the API")
        yield url, collector
    finally:
        stop_process(proc)
        collector.stop()


def _new_tenant(database: Database, **changes: Any) -> IssuedKey:
    with database.transaction() as session:
        issued = create_key(
            session, tenant_name=f"chat-{uuid.uuid4().hex[:8]}", now=utcnow(), tier="unlimited"
        )
        if changes:
            update_tenant(session, issued.tenant_id, changes, utcnow(), tiers={"unlimited"})
    return issued


@pytest.fixture
def key(database: Database) -> str:
    return _new_tenant(database).api_key


@pytest.fixture
def client(api: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api}/v1", api_key=key)


def _job(api: str, key: str, completion_id: str) -> dict[str, Any]:
    assert completion_id.startswith("chatcmpl-job_")
    job_id = completion_id.removeprefix("chatcmpl-")
    response = httpx.get(f"{api}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    return dict(response.json())


def test_a_chat_completion_is_answered_by_a_job_with_the_same_text_usage_and_cost(
    client: openai.OpenAI, api: str, key: str
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",  # a bare name is an OpenAI model
        messages=[
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "Say hello to the queue"}]},
        ],
        max_completion_tokens=64,
        temperature=0,
        user="alice",
        metadata={"team": "search"},
    )
    answer = raw.parse()
    assert answer.object == "chat.completion"
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "stop" and choice.logprobs is None
    job = _job(api, key, answer.id)
    assert raw.headers["X-LLMQ-Job-Id"] == job["id"]
    assert job["status"] == "completed" and job["model"] == "openai/gpt-4o-mini"
    assert job["result"]["text"] == choice.message.content
    assert job["metadata"] == {"team": "search"}
    assert answer.model == job["served_by"]
    assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens == job["usage"]["prompt_tokens"] > 0
    assert answer.usage.completion_tokens == job["usage"]["completion_tokens"] > 0
    assert answer.usage.total_tokens == job["usage"]["total_tokens"]
    assert answer.usage.prompt_tokens_details.cached_tokens == job["usage"]["cached_tokens"]
    assert job["cost_usd"] is not None and job["cost_usd"] > 0
    assert float(raw.headers["X-LLMQ-Cost-USD"]) == pytest.approx(job["cost_usd"])


def test_stream_sends_the_jobs_text_as_it_grows_then_finish_reason_usage_and_done(
    client: openai.OpenAI, api: str, key: str, sim: SimulatorControl
) -> None:
    model = unique_model("chat-stream")
    sim.script(model, [], default={"fault": "ok", "latency": 1.5})  # 12 words over 1.5 s
    stream = client.chat.completions.create(
        model=f"openai/{model}",
        messages=[{"role": "user", "content": "Tell me a story"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1, "the text should arrive while the job runs, in more than one delta"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    job = _job(api, key, chunks[0].id)
    assert job["status"] == "completed"
    assert "".join(pieces) == job["result"]["text"]
    assert chunks[-1].usage.completion_tokens == job["usage"]["completion_tokens"]
    assert chunks[-1].usage.prompt_tokens == job["usage"]["prompt_tokens"]


def test_a_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_async_client_works_too(api: str, key: str) -> None:
    async def ask() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=f"{api}/v1", api_key=key) as client:
            answer = await client.chat.completions.create(
                model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hello async"}]
            )
            stream = await client.chat.completions.create(
                model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hello async"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return answer.choices[0].message.content or "", text

    plain, streamed = asyncio.run(ask())
    assert plain and plain == streamed  # the simulator answers a prompt the same way each time


def test_a_bad_key_is_an_authentication_error(api: str) -> None:
    client = openai.OpenAI(base_url=f"{api}/v1", api_key="llmq_not_a_key")
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "invalid_api_key" and caught.value.type == "invalid_request_error"


def test_a_model_of_an_unknown_provider_is_not_found_and_makes_no_job(
    client: openai.OpenAI, api: str, key: str
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nosuch/model", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"
    jobs = httpx.get(f"{api}/v1/jobs", headers={"Authorization": f"Bearer {key}"}).json()
    assert jobs["data"] == []


def test_a_model_the_provider_does_not_know_fails_the_job_as_not_found(
    client: openai.OpenAI, api: str, key: str, sim: SimulatorControl
) -> None:
    model = unique_model("chat-gone")
    sim.script(model, [], default={"fault": "404"})
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model=f"openai/{model}", messages=[{"role": "user", "content": "x"}])
    job_id = caught.value.response.headers["X-LLMQ-Job-Id"]
    assert caught.value.code == "model_not_found" and job_id in caught.value.message
    job = _job(api, key, f"chatcmpl-{job_id}")
    assert job["status"] == "failed" and job["error"]["type"] == "not_found"
    assert sim.requests_for(model) == 1  # a permanent error: neither llmq nor the SDK retried


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
        ({"no_such_argument": 1}, "no_such_argument", None),
        ({"temperature": 3.5}, "temperature", "invalid_value"),
        ({"llmq": {"model": "x"}}, "llmq.model", None),
    ],
)
def test_invalid_or_unsupported_parameters_are_bad_requests_naming_the_param(
    client: openai.OpenAI, extra: dict[str, Any], param: str, code: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_body=extra
        )
    assert caught.value.param == param and caught.value.code == code


def test_a_message_without_a_role_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"content": "x"}])  # type: ignore[list-item]
    assert caught.value.param == "messages.[0].role" and caught.value.code == "missing_required_parameter"


def test_over_the_keys_rate_is_a_rate_limit_error_with_retry_after(api: str, database: Database) -> None:
    issued = _new_tenant(database, rpm=1)
    client = openai.OpenAI(base_url=f"{api}/v1", api_key=issued.api_key, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "one"}])
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "two"}])
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["Retry-After"]) >= 1


def test_a_job_over_budget_is_insufficient_quota_and_not_retried(api: str, database: Database) -> None:
    issued = _new_tenant(database, budget_usd=0)
    client = openai.OpenAI(base_url=f"{api}/v1", api_key=issued.api_key)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "spend"}])
    assert caught.value.code == "insufficient_quota" and caught.value.type == "insufficient_quota"
    assert caught.value.response.headers["x-should-retry"] == "false"
    jobs = httpx.get(f"{api}/v1/jobs", headers={"Authorization": f"Bearer {issued.api_key}"}).json()["data"]
    assert len(jobs) == 1 and jobs[0]["error"]["type"] == "budget_exceeded"  # one job: no SDK retry


def test_past_the_wait_deadline_the_answer_names_the_job_which_runs_on(
    client: openai.OpenAI, api: str, key: str, sim: SimulatorControl
) -> None:
    model = unique_model("chat-slow")
    sim.script(model, [], default={"fault": "ok", "latency": 1.5})
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model=f"openai/{model}",
            messages=[{"role": "user", "content": "take your time"}],
            extra_headers={"X-LLMQ-Wait-Timeout": "0.3"},
        )
    assert caught.value.status_code == 504 and caught.value.code == "job_still_running"
    job_id = caught.value.response.headers["X-LLMQ-Job-Id"]
    assert job_id in caught.value.message
    auth = {"Authorization": f"Bearer {key}"}
    done = wait_for(
        lambda: (
            (j := httpx.get(f"{api}/v1/jobs/{job_id}", headers=auth).json())["status"] == "completed" and j
        ),
        timeout=30,
        what="the job to complete after the deadline",
    )
    assert done["result"]["text"]
    assert sim.requests_for(model) == 1  # the SDK did not retry into a second job


def test_the_same_idempotency_key_answers_the_same_job(client: openai.OpenAI) -> None:
    headers = {"Idempotency-Key": f"chat-{uuid.uuid4().hex}"}
    body: Any = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "once"}]}
    first = client.chat.completions.create(**body, extra_headers=headers)
    second = client.chat.completions.create(**body, extra_headers=headers)
    assert first.id == second.id and first.choices[0].message.content == second.choices[0].message.content


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
PERSON_SCHEMA: Any = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def test_a_tool_call_comes_back_parsed_by_the_sdk_and_the_tool_result_turn_is_answered(
    client: openai.OpenAI, api: str, key: str
) -> None:
    question: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=question,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])
    job = _job(api, key, answer.id)
    assert job["result"]["tool_calls"] == [call.model_dump(exclude_none=True)]

    followed = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            *question,
            choice.message,  # type: ignore[list-item]  # the SDK's own object appended back, as callers do
            {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear", "celsius": 21}'},
        ],
        tools=[WEATHER_TOOL],
    )
    assert followed.choices[0].finish_reason == "stop" and followed.choices[0].message.content
    assert followed.choices[0].message.tool_calls is None
    stored = _job(api, key, followed.id)
    sent = httpx.get(f"{api}/v1/jobs/{stored['id']}", headers={"Authorization": f"Bearer {key}"}).json()
    assert sent["status"] == "completed"


def test_a_streamed_tool_call_arrives_as_tool_call_deltas(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Weather in Oslo, please"}],
            tools=[WEATHER_TOOL],
            tool_choice="required",
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function is not None and calls[0].function.name == "get_weather"
    assert calls[0].id and calls[0].function.arguments
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER_TOOL["function"]["parameters"])
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]


def test_response_format_json_schema_answers_json_that_fits_the_schema(
    client: openai.OpenAI, api: str, key: str
) -> None:
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Invent a person"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
        },
    )
    content = answer.choices[0].message.content
    assert content is not None
    jsonschema.validate(json.loads(content), PERSON_SCHEMA)
    assert _job(api, key, answer.id)["result"]["text"] == content


def test_the_sdks_parse_helper_returns_the_pydantic_object(client: openai.OpenAI) -> None:
    class Person(pydantic.BaseModel):
        name: str
        age: int

    answer = client.chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Invent a person"}],
        response_format=Person,
    )
    parsed = answer.choices[0].message.parsed
    assert isinstance(parsed, Person) and parsed.name


def test_stop_seed_top_p_and_n_reach_the_job(client: openai.OpenAI, api: str, key: str) -> None:
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Give me some words"}],
        n=2,
        seed=7,
        top_p=0.9,
        stop=["zzz-never"],
    )
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.message.content for c in answer.choices)
    assert answer.choices[0].message.content != answer.choices[1].message.content
    job = _job(api, key, answer.id)
    assert [c["text"] for c in job["result"]["choices"]] == [c.message.content for c in answer.choices]


def test_a_parameter_the_provider_cannot_serve_is_unprocessable(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(
            model="anthropic/claude-3-5-haiku-latest", messages=[{"role": "user", "content": "x"}], seed=1
        )
    assert caught.value.code == "unsupported_parameter" and "seed" in caught.value.message


def test_the_raw_stream_is_server_sent_events_ending_in_done(api: str, key: str) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "raw"}], "stream": True}
    with httpx.stream(
        "POST", f"{api}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["X-LLMQ-Job-Id"].startswith("job_")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith(("data: ", ":")) for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["choices"][0]["delta"]["role"] == "assistant"


def test_past_the_processes_waiting_limit_a_request_is_refused_before_any_job_is_made(
    settings: Settings, database: Database, worker: str, key: str
) -> None:
    """One waiting slot: a stream holds it until it is closed; meanwhile another request gets a
    429 the SDK would retry, and no job."""
    app = create_app(settings.model_copy(update={"chat_max_waiting": 1}))
    auth = {"Authorization": f"Bearer {key}"}
    body: Any = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hold"}]}
    try:
        client = app.test_client()
        held = client.post(
            "/v1/chat/completions", json={**body, "stream": True}, headers=auth, buffered=False
        )
        assert held.status_code == 200
        refused = client.post("/v1/chat/completions", json=body, headers=auth)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        assert refused.get_json()["error"]["code"] == "too_many_waiting_requests"
        assert len(client.get("/v1/jobs", headers=auth).get_json()["data"]) == 1  # the held one only
        held.close()  # the stream ends: its slot is free again
        answered = client.post("/v1/chat/completions", json=body, headers=auth)
        assert answered.status_code == 200 and answered.get_json()["object"] == "chat.completion"
    finally:
        app.extensions["llmq.db"].dispose()


def test_a_job_cancelled_while_the_call_waits_is_a_conflict_naming_it(
    client: openai.OpenAI, api: str, key: str, sim: SimulatorControl
) -> None:
    model = unique_model("chat-cancel")
    sim.script(model, [], default={"fault": "ok", "latency": 1.5})
    auth = {"Authorization": f"Bearer {key}"}
    caught: list[BaseException] = []

    def ask() -> None:
        try:
            client.chat.completions.create(
                model=f"openai/{model}", messages=[{"role": "user", "content": "x"}]
            )
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    job = wait_for(
        lambda: next(iter(httpx.get(f"{api}/v1/jobs", headers=auth).json()["data"]), None),
        what="the chat job",
        interval=0.05,
    )
    assert httpx.post(f"{api}/v1/jobs/{job['id']}/cancel", headers=auth).status_code == 200
    thread.join(30)
    assert len(caught) == 1 and isinstance(caught[0], openai.ConflictError)
    assert caught[0].code == "job_cancelled" and caught[0].response.headers["X-LLMQ-Job-Id"] == job["id"]
    assert len(httpx.get(f"{api}/v1/jobs", headers=auth).json()["data"]) == 1  # the SDK did not retry


def test_a_streamed_job_that_fails_ends_the_stream_with_an_api_error(
    client: openai.OpenAI, sim: SimulatorControl
) -> None:
    model = unique_model("chat-stream-fail")
    sim.script(model, [], default={"fault": "400", "code": "context_length_exceeded"})
    stream = client.chat.completions.create(
        model=f"openai/{model}", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert caught.value.code == "context_length_exceeded" and "job_" in caught.value.message


def test_a_chat_jobs_webhook_fires_like_any_jobs(
    client: openai.OpenAI, webhook_receiver: WebhookReceiver
) -> None:
    path = f"/chat/{uuid.uuid4().hex[:8]}"
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hook me"}],
        extra_body={"llmq": {"webhook_url": webhook_receiver.url(path)}},
    )
    hook = wait_for(lambda: webhook_receiver.for_path(path), what="the webhook")[0].json()
    assert hook["type"] == "job.completed" and f"chatcmpl-{hook['data']['id']}" == answer.id
    assert hook["data"]["result"]["text"] == answer.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_completion_is_the_root_span_of_its_jobs_trace(
    traced_api: tuple[str, OtlpCollector], database: Database, key: str, stream: bool
) -> None:
    url, collector = traced_api
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "trace me"}], stream=stream
    )
    job_id = raw.headers["X-LLMQ-Job-Id"]
    if stream:
        chunks: Any = raw.parse()  # a Stream of chunks (the call's type is a union over `stream`)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    (span,) = wait_for(
        lambda: [
            s
            for s in collector.received()
            if s.name == "llmq.submit" and s.attributes.get("llmq.job_id") == job_id
        ],
        what="the submit span",
    )
    assert span.service == "llmq-api" and span.attributes["http.response.status_code"] == 200
    with database.session() as session:
        traceparent = session.get(Job, job_id).traceparent  # type: ignore[union-attr]
    assert traceparent is not None and traceparent.split("-")[1:3] == [span.trace_id, span.span_id]
