"""The pure parts of the Batch API: a line read into a job or refused with OpenAI's reason, the
upload counter that refuses the byte past a limit, and a job stated as OpenAI states it."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from llmq.models.batch_lines import LineRules, Refused, custom_id_of, idempotency_key_of, parse_line
from llmq.models.batch_output import job_line
from llmq.models.files import CountingWriter, UploadTooLarge
from llmq.models.openai_shapes import chat_completion_of, llmq_model

RULES = LineRules(
    known_model=lambda model: model.split("/", 1)[0] in {"openai", "anthropic"},
    allowed_models=None,
    max_attempts=5,
    timeout_s=3600.0,
)


def _raw(body: dict[str, Any] | None = None, **envelope: Any) -> bytes:
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", **envelope}
    line["body"] = (
        body
        if body is not None
        else {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    )
    return json.dumps(line).encode()


def test_a_valid_line_is_a_bulk_job_of_its_batch_with_its_custom_id() -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}]},
        ],
        "max_completion_tokens": 7,
        "temperature": 1,
    }
    custom_id, job = parse_line(_raw(body), "batch_x", RULES)
    assert custom_id == "r1"
    assert job.model == "openai/gpt-4o-mini" and job.priority == "bulk" and job.batch_id == "batch_x"
    assert job.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}]},
    ]
    assert (job.max_tokens, job.temperature) == (7, 1.0)
    assert job.metadata == {"batch_id": "batch_x", "custom_id": "r1"}
    assert job.request_options is None  # a plain line is a plain job


def test_a_line_carries_the_request_surface_to_its_job() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    schema = {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
            }
        ],
        "tools": [tool],
        "tool_choice": "required",
        "response_format": {"type": "json_schema", "json_schema": schema},
        "stop": "END",
        "seed": 7,
        "n": 2,
    }
    _, job = parse_line(_raw(body), "batch_x", RULES)
    options = job.request_options
    assert options is not None
    assert options["tools"][0]["function"]["name"] == "get_weather" and options["tool_choice"] == "required"
    assert options["response_format"]["json_schema"]["name"] == "answer"
    assert (options["stop"], options["seed"], options["n"]) == (["END"], 7, 2)
    assert job.messages[0]["content"][0]["type"] == "image_url"
    with pytest.raises(Refused) as refused:  # a tool_choice naming no tool is refused by name
        parse_line(_raw({**body, "tool_choice": {"type": "function", "function": {"name": "x"}}}), "b", RULES)
    assert refused.value.code == "invalid_request" and "tool_choice" in str(refused.value.message)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_request"),
        (_raw(custom_id=""), "invalid_custom_id"),
        (_raw(method="GET"), "invalid_method"),
        (_raw(url="/v1/embeddings"), "invalid_url"),
        (_raw({"model": "gpt-4o-mini", "messages": []}), "invalid_request"),
        (
            _raw({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "tools": []}),
            "invalid_request",
        ),
        (_raw({"model": "nosuch/model", "messages": [{"role": "user", "content": "x"}]}), "model_not_found"),
    ],
)
def test_a_line_that_cannot_run_is_refused_with_openais_reason(raw: bytes, code: str) -> None:
    with pytest.raises(Refused) as refused:
        parse_line(raw, "batch_x", RULES)
    assert refused.value.code == code and refused.value.message


def test_a_model_the_key_may_not_use_is_refused() -> None:
    rules = LineRules(RULES.known_model, ("anthropic/*",), 5, 3600.0)
    with pytest.raises(Refused) as refused:
        parse_line(_raw(), "batch_x", rules)
    assert refused.value.code == "model_not_allowed" and refused.value.custom_id == "r1"


def test_custom_ids_key_their_batch_and_are_read_from_any_line() -> None:
    assert idempotency_key_of("batch_a", "x") != idempotency_key_of("batch_b", "x")
    assert len(idempotency_key_of("batch_" + "a" * 30, "x" * 512)) <= 255
    assert custom_id_of(_raw()) == "r1" and custom_id_of(b"garbage") is None


def test_the_upload_counter_refuses_the_write_past_a_limit() -> None:
    writer = CountingWriter(io.BytesIO(), max_bytes=20, max_lines=2)
    writer.write(b"a\nb")
    assert (writer.bytes, writer.lines) == (3, 2)
    with pytest.raises(UploadTooLarge, match="lines"):
        writer.write(b"\nc")
    big = CountingWriter(io.BytesIO(), max_bytes=4, max_lines=100)
    with pytest.raises(UploadTooLarge, match="bytes"):
        big.write(b"12345")
    assert not isinstance(UploadTooLarge("x"), ValueError)  # werkzeug's parser swallows those


def _job(**values: Any) -> SimpleNamespace:
    now = datetime(2026, 12, 4, tzinfo=UTC)
    base: dict[str, Any] = {
        "id": "job_abc",
        "status": "completed",
        "model": "openai/gpt-4o-mini",
        "served_by": "openai/gpt-4o-mini",
        "result_text": "hi there",
        "finish_reason": "stop",
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "result_extra": None,
        "error_type": None,
        "error_message": None,
        "request_id": "req-1",
        "created_at": now,
        "completed_at": now,
        "metadata_": {"custom_id": "c-1"},
    }
    return SimpleNamespace(**{**base, **values})


def test_a_completed_job_is_a_chat_completion_the_sdk_reads() -> None:
    completion = ChatCompletion.model_validate(chat_completion_of(_job()))
    assert completion.choices[0].message.content == "hi there"
    assert completion.usage is not None and completion.usage.total_tokens == 5
    assert llmq_model("gpt-4o") == "openai/gpt-4o" and llmq_model("local/meta/llama3") == "local/meta/llama3"


def test_each_line_job_has_one_line_in_the_output_or_the_error_file() -> None:
    ok, line = job_line(_job())
    assert ok and line["custom_id"] == "c-1" and line["response"]["status_code"] == 200
    failed, line = job_line(_job(status="failed", error_type="invalid_request", error_message="bad"))
    assert not failed and line["response"]["status_code"] == 400
    assert line["response"]["body"]["error"]["message"] == "bad"
    cancelled, line = job_line(_job(status="cancelled", error_type="batch_expired", error_message="late"))
    assert not cancelled and line["response"] is None and line["error"]["code"] == "batch_expired"


def test_the_documented_objects_are_the_ones_answered() -> None:
    from llmq.api.batch_schemas import BatchOut, FileOut
    from llmq.models.batch_tables import Batch, StoredFile
    from llmq.models.batches import batch_public
    from llmq.models.files import file_public

    now = datetime(2026, 12, 4, tzinfo=UTC)
    batch = Batch(
        id="batch_1",
        endpoint="/v1/chat/completions",
        input_file_id="file-1",
        completion_window="24h",
        status="completed",
        errors=[{"code": "invalid_json", "message": "x", "line": 1}],
        metadata_={"k": "v"},
        total=2,
        completed=1,
        failed=1,
        created_at=now,
        expires_at=now,
        completed_at=now,
    )
    view = batch_public(batch)
    assert BatchOut.model_validate(view).model_dump() == view
    stored = StoredFile(id="file-1", purpose="batch", filename="in.jsonl", bytes=3, lines=1, created_at=now)
    assert FileOut.model_validate(file_public(stored)).model_dump() == file_public(stored)


def test_a_tool_call_answer_is_a_chat_completion_with_its_tool_calls() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    job = _job(result_text="", finish_reason="tool_calls", result_extra={"tool_calls": [call]})
    completion = ChatCompletion.model_validate(chat_completion_of(job))
    (tool_call,) = completion.choices[0].message.tool_calls or []
    assert completion.choices[0].finish_reason == "tool_calls"
    assert tool_call.type == "function"
    assert tool_call.model_dump()["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
