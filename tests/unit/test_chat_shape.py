"""The chat completions translation, without services: an OpenAI request into a job, a job into
OpenAI's objects, failures into OpenAI's errors, and the tail of a stream."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from pydantic import ValidationError

from llmq.api.chat_errors import from_failed_job, from_validation_error, job_error_body
from llmq.api.chat_schemas import ChatCompletionCreate
from llmq.api.chat_shape import ChunkMaker
from llmq.api.chat_wait import _ending
from llmq.models.openai_shapes import completion

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}


def _job(**result: Any) -> dict[str, Any]:
    return {
        "id": "job_abc",
        "status": "completed",
        "model": "openai/gpt-4o-mini",
        "served_by": "openai/gpt-4o-mini",
        "created_at": "2026-12-04T10:00:00Z",
        "attempts": 1,
        "result": {
            "text": "hello world",
            "finish_reason": "stop",
            "tool_calls": None,
            "choices": None,
            **result,
        },
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7, "cached_tokens": 1},
        "error": None,
    }


def test_a_request_becomes_the_job_it_asks_for() -> None:
    chat = ChatCompletionCreate.model_validate(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [CALL],
                    "refusal": None,
                    "annotations": [],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            ],
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "safety_identifier": "alice",
            "user": "bob",
            "service_tier": "flex",
            "metadata": {"team": "x"},
            "stop": "END",
            "llmq": {"fallbacks": ["anthropic/claude-3-5-haiku-latest"]},
        }
    )
    job = chat.to_job()
    assert job.model == "openai/gpt-4o-mini"
    assert job.message_dicts() == [
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    assert (job.max_tokens, job.user, job.priority, job.metadata) == (20, "alice", "bulk", {"team": "x"})
    assert job.options_dict() == {"stop": ["END"]}
    assert job.fallbacks == ["anthropic/claude-3-5-haiku-latest"]


def _error_of(body: dict[str, Any], *, job: bool = False) -> tuple[int, dict[str, Any]]:
    with Flask(__name__).app_context():
        try:
            chat = ChatCompletionCreate.model_validate(body)
            chat.to_job()
        except ValidationError as exc:
            response = from_validation_error(exc, job=job or exc.title == "JobCreate")
            return response.status_code, response.get_json()["error"]
    raise AssertionError("the request validated")


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"audio": {}}, "audio", "unsupported_parameter"),
        ({"foo": 1}, "foo", None),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "invalid_value"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls", "invalid_value"),
        (
            {"messages": [{"role": "user"}, {"content": "x"}]},
            "messages.[1].role",
            "missing_required_parameter",
        ),
    ],
)
def test_refusals_name_the_param_as_openai_writes_it(
    extra: dict[str, Any], param: str, code: str | None
) -> None:
    status, error = _error_of({"model": "m", "messages": [{"role": "user", "content": "x"}], **extra})
    assert status == 400 and error["param"] == param and error["code"] == code
    assert error["type"] == "invalid_request_error" and error["message"]


def test_a_completed_job_is_a_chat_completion_with_every_choice() -> None:
    job = _job(
        choices=[
            {"index": 0, "text": "", "finish_reason": "tool_calls", "tool_calls": [CALL]},
            {"index": 1, "text": "hi", "finish_reason": "length", "tool_calls": None},
        ]
    )
    body = completion(job)
    assert body["id"] == "chatcmpl-job_abc" and body["object"] == "chat.completion"
    assert body["created"] == 1796378400
    first, second = body["choices"]
    assert first["message"]["content"] is None and first["message"]["tool_calls"] == [CALL]
    assert first["finish_reason"] == "tool_calls"
    assert second["message"]["content"] == "hi" and second["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 1


@pytest.mark.parametrize(
    ("error_type", "status", "code"),
    [
        ("budget_exceeded", 429, "insufficient_quota"),
        ("not_found", 404, "model_not_found"),
        ("context_length", 400, "context_length_exceeded"),
        ("timeout", 504, "timeout"),
        ("provider_error", 502, "provider_error"),
    ],
)
def test_a_failed_job_is_the_error_openai_would_give(error_type: str, status: int, code: str) -> None:
    job = {**_job(), "status": "failed", "result": None, "error": {"type": error_type, "message": "no"}}
    with Flask(__name__).app_context():
        response = from_failed_job(job, {"X-LLMQ-Job-Id": "job_abc"})
    assert response.status_code == status and response.headers["x-should-retry"] == "false"
    assert response.get_json()["error"]["code"] == code and "job_abc" in job_error_body(job)[1]["message"]


def _events(job: dict[str, Any], sent: str, include_usage: bool = True) -> list[Any]:
    chunks = ChunkMaker("job_abc", 1, "openai/gpt-4o-mini", include_usage)
    raw = list(_ending(job, sent, chunks))
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in raw)
    return [e[6:-2] if e.startswith("data: [DONE]") else json.loads(e[6:]) for e in raw]


def test_a_stream_ends_with_the_rest_of_the_text_the_finish_reason_the_usage_and_done() -> None:
    events = _events(_job(), "hello")
    assert events[0]["choices"][0]["delta"] == {"content": " world"}
    assert events[1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert events[2]["choices"] == [] and events[2]["usage"]["total_tokens"] == 7
    assert events[3] == "[DONE]"


def test_a_stream_whose_retry_answered_otherwise_ends_with_an_error_naming_the_job() -> None:
    events = _events(_job(), "goodbye")
    assert len(events) == 1 and events[0]["error"]["code"] == "stream_diverged"
    assert "job_abc" in events[0]["error"]["message"]


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "user", "content": 5}, "messages.[0].content"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]},
            "messages.[0].content.[0].image_url.url",
        ),
        ({"role": "tool", "content": "42"}, "messages.[0].tool_call_id"),
    ],
)
def test_a_param_the_job_refuses_is_named_as_the_client_wrote_it(message: dict[str, Any], param: str) -> None:
    status, error = _error_of({"model": "m", "messages": [message]}, job=True)
    assert status == 400 and error["param"] == param


def test_response_format_params_are_named_without_the_union_tag() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "p"}},
    }
    status, error = _error_of(body, job=True)
    assert status == 400 and error["param"] == "response_format.json_schema.schema"


def test_auto_stays_the_router_and_other_bare_names_are_openai_models() -> None:
    message = [{"role": "user", "content": "x"}]
    assert ChatCompletionCreate(model="auto", messages=message).job_fields()["model"] == "auto"  # type: ignore[arg-type]
    assert ChatCompletionCreate(model="o3", messages=message).job_fields()["model"] == "openai/o3"  # type: ignore[arg-type]
