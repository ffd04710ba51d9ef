"""What llmq sends to the providers' batch APIs and reads back: the OpenAI JSONL input file and
its output/error lines, Anthropic's batch requests and result lines, the batch price, and the
``[provider_batches]`` table of the providers file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmq.config.prices import ModelPrice
from llmq.config.providers_file import ProvidersFileError, load_providers_file
from llmq.config.settings import DEFAULT_PROVIDERS_FILE
from llmq.workers.pricing import PriceTable
from llmq.workers.providers.base import ChatMessage, ProviderRequest
from llmq.workers.providers.batch_formats import (
    BatchLine,
    anthropic_requests,
    openai_jsonl,
    parse_anthropic_result,
    parse_openai_results,
)
from llmq.workers.providers.errors import InvalidRequestError, ProviderServerError, RateLimitedError

REQUEST = ProviderRequest(
    model="gpt-4o-mini",
    messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "Summarise this.")),
    max_tokens=50,
    temperature=0.2,
    user="alice",
)


def test_openai_input_file_has_one_chat_completions_request_per_job() -> None:
    data = openai_jsonl([BatchLine("job_a", REQUEST), BatchLine("job_b", REQUEST)])
    lines = [json.loads(raw) for raw in data.decode().splitlines()]
    assert [line["custom_id"] for line in lines] == ["job_a", "job_b"]
    assert lines[0] == {
        "custom_id": "job_a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Summarise this."},
            ],
            "max_tokens": 50,
            "temperature": 0.2,
            "user": "alice",
        },
    }


def test_openai_reasoning_models_get_max_completion_tokens() -> None:
    request = ProviderRequest(
        model="o4-mini", messages=(ChatMessage("user", "hi"),), max_tokens=9, temperature=None
    )
    (line,) = [json.loads(raw) for raw in openai_jsonl([BatchLine("job_a", request)]).decode().splitlines()]
    assert line["body"] == {
        "model": "o4-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 9,
    }


def test_anthropic_requests_put_the_system_prompt_on_top_and_default_max_tokens() -> None:
    request = ProviderRequest(model="claude-x", messages=REQUEST.messages, max_tokens=None, temperature=None)
    (entry,) = anthropic_requests([BatchLine("job_a", request)], default_max_tokens=1024)
    assert entry == {
        "custom_id": "job_a",
        "params": {
            "model": "claude-x",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Summarise this."}],
            "system": "Be brief.",
        },
    }


def _openai_line(custom_id: str, status: int, body: Mapping[str, object]) -> str:
    response = {"status_code": status, "request_id": "req_1", "body": body}
    return json.dumps({"id": "batch_req_1", "custom_id": custom_id, "response": response, "error": None})


def test_openai_output_and_error_lines_become_answers_typed_errors_and_unfinished_lines() -> None:
    completion = {
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}},
    }
    bad = {"error": {"message": "bad", "type": "invalid_request_error", "code": None}}
    busy = {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}
    expired = {
        "custom_id": "job_d",
        "response": None,
        "error": {"code": "batch_expired", "message": "window"},
    }
    text = "\n".join(
        [
            _openai_line("job_a", 200, completion),
            _openai_line("job_b", 400, bad),
            _openai_line("job_c", 429, busy),
            json.dumps(expired),
            "",
        ]
    )
    a, b, c, d = parse_openai_results(text)
    assert a.response is not None and (
        a.response.text,
        a.response.prompt_tokens,
        a.response.cached_tokens,
    ) == (
        "done",
        20,
        4,
    )
    assert isinstance(b.error, InvalidRequestError) and not b.error.retryable
    assert isinstance(c.error, RateLimitedError) and c.error.retryable
    assert (d.custom_id, d.unfinished, d.response, d.error) == ("job_d", "expired", None, None)


def test_anthropic_result_lines_count_cache_tokens_in_the_prompt() -> None:
    message = {
        "model": "claude-x",
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "max_tokens",
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 5,
            "output_tokens": 7,
        },
    }
    ok = parse_anthropic_result({"custom_id": "job_a", "result": {"type": "succeeded", "message": message}})
    assert ok.response is not None
    assert (ok.response.prompt_tokens, ok.response.cached_tokens, ok.response.cache_write_tokens) == (
        115,
        100,
        5,
    )
    assert (ok.response.finish_reason, ok.response.completion_tokens) == ("length", 7)
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    busy = parse_anthropic_result({"custom_id": "job_b", "result": {"type": "errored", "error": overloaded}})
    assert isinstance(busy.error, ProviderServerError) and busy.error.retryable
    invalid = {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}
    refused = parse_anthropic_result({"custom_id": "job_c", "result": {"type": "errored", "error": invalid}})
    assert refused.error is not None and not refused.error.retryable
    assert (
        parse_anthropic_result({"custom_id": "job_d", "result": {"type": "expired"}}).unfinished == "expired"
    )
    assert (
        parse_anthropic_result({"custom_id": "job_e", "result": {"type": "canceled"}}).unfinished
        == "canceled"
    )


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
RICH = ProviderRequest(
    model="m",
    messages=(
        ChatMessage("system", "Be brief."),
        ChatMessage("user", [{"type": "text", "text": "What is this?"}, IMAGE]),
        ChatMessage("assistant", None, tool_calls=[CALL]),
        ChatMessage("tool", "42", tool_call_id="call_1"),
    ),
    max_tokens=30,
    temperature=None,
    options={
        "tools": TOOLS,
        "tool_choice": "required",
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}},
        "stop": ["END"],
        "top_p": 0.5,
    },
)


def test_an_openai_line_carries_the_whole_request_surface_as_a_normal_call_does() -> None:
    (line,) = [json.loads(raw) for raw in openai_jsonl([BatchLine("job_a", RICH)]).decode().splitlines()]
    assert line["body"] == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, IMAGE]},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ],
        "max_tokens": 30,
        **{k: RICH.options[k] for k in ("tools", "tool_choice", "response_format", "stop", "top_p")},  # type: ignore[index]
    }


def test_an_anthropic_entry_carries_the_whole_request_surface_in_its_own_spelling() -> None:
    (entry,) = anthropic_requests([BatchLine("job_a", RICH)], default_max_tokens=1024)
    assert entry["params"] == {
        "model": "m",
        "max_tokens": 30,
        "system": "Be brief.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "x"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "42"}]},
        ],
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
        "stop_sequences": ["END"],
        "top_p": 0.5,
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
    }


def test_tool_calls_and_every_choice_are_read_back_from_result_lines() -> None:
    completion = {
        "model": "m",
        "choices": [
            {"index": 1, "message": {"role": "assistant", "content": "second"}, "finish_reason": "stop"},
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [CALL]},
                "finish_reason": "tool_calls",
            },
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4},
    }
    (line,) = parse_openai_results(_openai_line("job_a", 200, completion))
    assert line.response is not None
    assert (line.response.text, line.response.finish_reason, line.response.tool_calls) == (
        "",
        "tool_calls",
        [CALL],
    )
    assert [(c["index"], c["text"]) for c in line.response.choices or []] == [(0, ""), (1, "second")]
    message = {
        "model": "claude-x",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 7},
    }
    entry = parse_anthropic_result(
        {"custom_id": "job_b", "result": {"type": "succeeded", "message": message}}
    )
    assert entry.response is not None and entry.response.finish_reason == "tool_calls"
    assert entry.response.tool_calls == [
        {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}}
    ]


def test_a_batch_call_costs_half_the_standard_price_unless_the_file_gives_one() -> None:
    table = PriceTable.from_config(load_providers_file(DEFAULT_PROVIDERS_FILE))
    standard = table.cost("openai/gpt-4o-mini", 2000, 100, cached_tokens=1024)
    assert standard is not None and table.batch_cost("openai/gpt-4o-mini", 2000, 100, 1024) == standard / 2
    price = ModelPrice(
        input_usd_per_mtok=Decimal(10),
        output_usd_per_mtok=Decimal(30),
        batch_input_usd_per_mtok=Decimal(4),
        batch_output_usd_per_mtok=Decimal(12),
    )
    given = PriceTable({"a/b": price})
    assert given.batch_cost("a/b", 1_000_000, 1_000_000) == Decimal(16)
    assert given.cost("a/b", 1_000_000, 1_000_000) == Decimal(40)
    assert price.public()["batch_output_usd_per_mtok"] == 12.0
    with pytest.raises(ValidationError, match="both batch_input_usd_per_mtok"):
        ModelPrice(
            input_usd_per_mtok=Decimal(1), output_usd_per_mtok=Decimal(1), batch_input_usd_per_mtok=Decimal(1)
        )


def test_provider_batches_are_off_by_default_and_the_table_is_checked(tmp_path: Path) -> None:
    shipped = load_providers_file(DEFAULT_PROVIDERS_FILE).provider_batches
    assert not shipped.enabled and not shipped.covers("openai")
    path = tmp_path / "p.toml"
    path.write_text('[provider_batches]\nenabled = true\nproviders = ["openai"]\nmin_jobs = 5\n')
    config = load_providers_file(path).provider_batches
    assert config.covers("openai") and not config.covers("anthropic") and config.min_jobs == 5
    path.write_text('[provider_batches]\nenabled = true\nproviders = ["local"]\n')
    with pytest.raises(ProvidersFileError, match="providers"):
        load_providers_file(path)
    path.write_text("[provider_batches]\nmin_job = 5\n")
    with pytest.raises(ProvidersFileError, match="unknown key"):
        load_providers_file(path)
