"""The request surface through llmq's own provider clients (official SDKs, real HTTP) against the
simulator: tools, tool results, json_schema, stop, seed, n and images, plain and streamed, on
both the OpenAI and the Anthropic client. The job-level tests (``test_request_surface.py``) run
the streamed path through a worker; these also pin the plain request/response path."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from llmq.simulator import BackgroundSimulator, SimulatorConfig
from llmq.simulator.surface import IMAGE_TOKENS
from llmq.workers.providers import AnthropicProvider, ChatMessage, OpenAIProvider, ProviderRequest
from llmq.workers.providers.base import ProviderResponse
from llmq.workers.providers.errors import InvalidJSONOutputError

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER},
    }
]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "address": {"$ref": "#/$defs/address"},
    },
    "required": ["name", "age", "tags", "address"],
    "$defs": {"address": {"type": "object", "properties": {"zip": {"type": "string"}}, "required": ["zip"]}},
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
PIXEL = (  # a 1x1 PNG
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKm"
    "MIQAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def sim() -> Iterator[BackgroundSimulator]:
    with BackgroundSimulator(SimulatorConfig(latency_s=0.0, reply_words=12)) as server:
        yield server


def _call(
    sim: BackgroundSimulator,
    kind: str,
    messages: list[dict[str, Any]],
    options: dict[str, Any] | None,
    *,
    stream: bool,
    model: str | None = None,
) -> ProviderResponse:
    progress: list[str] = []

    async def go() -> ProviderResponse:
        common: dict[str, Any] = {
            "api_key": "x",
            "timeout_s": 5.0,
            "connect_timeout_s": 2.0,
            "max_connections": 4,
        }
        provider: OpenAIProvider | AnthropicProvider
        if kind == "openai":
            provider = OpenAIProvider("openai", base_url=f"{sim.url}/v1", **common)
        else:
            provider = AnthropicProvider("anthropic", base_url=sim.url, **common)
        request = ProviderRequest(
            model=model or f"m-{uuid.uuid4().hex[:8]}",
            messages=tuple(
                ChatMessage(m["role"], m.get("content"), m.get("tool_calls"), m.get("tool_call_id"))
                for m in messages
            ),
            max_tokens=200,
            temperature=None,
            options=options,
        )
        try:
            return await provider.complete(
                request, (lambda text, _: progress.append(text)) if stream else None
            )
        finally:
            await provider.aclose()

    return asyncio.run(go())


USER = [{"role": "user", "content": "What is the weather in Paris this week?"}]
BOTH = pytest.mark.parametrize("kind", ["openai", "anthropic"])
STREAM = pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])


@BOTH
@STREAM
def test_tool_call_comes_back_with_arguments_valid_for_the_tool_schema(
    sim: BackgroundSimulator, kind: str, stream: bool
) -> None:
    response = _call(sim, kind, USER, {"tools": TOOLS, "tool_choice": "required"}, stream=stream)
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls is not None and len(response.tool_calls) == 1
    call = response.tool_calls[0]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER)


@BOTH
@STREAM
def test_conversation_goes_on_after_a_tool_result(sim: BackgroundSimulator, kind: str, stream: bool) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    messages: list[dict[str, Any]] = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]
    response = _call(sim, kind, messages, {"tools": TOOLS, "tool_choice": "auto"}, stream=stream)
    assert response.tool_calls is None
    assert response.finish_reason == "stop" and response.text


@BOTH
@STREAM
def test_json_schema_answer_is_valid_json_for_the_schema(
    sim: BackgroundSimulator, kind: str, stream: bool
) -> None:
    response = _call(sim, kind, USER, {"response_format": JSON_SCHEMA}, stream=stream)
    jsonschema.validate(json.loads(response.text), PERSON)


@BOTH
def test_invalid_json_answer_is_a_retryable_failure_that_was_billed(
    sim: BackgroundSimulator, kind: str
) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    httpx.post(
        f"{sim.url}/_sim/script", json={"model": model, "steps": [{"fault": "invalid_json"}]}
    ).raise_for_status()
    with pytest.raises(InvalidJSONOutputError) as failed:
        _call(sim, kind, USER, {"response_format": JSON_SCHEMA}, stream=True, model=model)
    assert failed.value.retryable and failed.value.error_type == "invalid_json_output"
    assert failed.value.billed is not None and failed.value.billed.completion_tokens > 0
    again = _call(sim, kind, USER, {"response_format": JSON_SCHEMA}, stream=True, model=model)
    jsonschema.validate(json.loads(again.text), PERSON)


@BOTH
@STREAM
def test_stop_sequence_cuts_the_text(sim: BackgroundSimulator, kind: str, stream: bool) -> None:
    full = _call(sim, kind, USER, None, stream=stream)
    assert full.text.startswith("Simulated answer to:")
    response = _call(sim, kind, USER, {"stop": ["to:"]}, stream=stream)
    assert response.text == "Simulated answer "
    assert response.finish_reason == "stop"


@STREAM
def test_openai_n_gives_that_many_choices_and_seed_fixes_the_text(
    sim: BackgroundSimulator, stream: bool
) -> None:
    response = _call(sim, "openai", USER, {"n": 2, "seed": 7}, stream=stream)
    assert response.choices is not None and [c["index"] for c in response.choices] == [0, 1]
    assert response.text == response.choices[0]["text"]
    assert response.choices[0]["text"] != response.choices[1]["text"]
    again = _call(sim, "openai", USER, {"n": 2, "seed": 7}, stream=stream)
    assert again.choices == response.choices
    other = _call(sim, "openai", USER, {"seed": 8}, stream=stream)
    assert other.text != response.text
    unseeded = _call(sim, "openai", USER, {"n": 3}, stream=stream)
    assert unseeded.choices is not None and len({c["text"] for c in unseeded.choices}) == 3


@BOTH
@STREAM
@pytest.mark.parametrize("url", [PIXEL, "https://example.com/cat.png"], ids=["base64", "url"])
def test_image_parts_are_accepted_and_counted(
    sim: BackgroundSimulator, kind: str, stream: bool, url: str
) -> None:
    text_only = _call(sim, kind, [{"role": "user", "content": "Describe it"}], None, stream=stream)
    parts = [{"type": "text", "text": "Describe it"}, {"type": "image_url", "image_url": {"url": url}}]
    response = _call(sim, kind, [{"role": "user", "content": parts}], None, stream=stream)
    assert response.prompt_tokens == text_only.prompt_tokens + IMAGE_TOKENS
    assert response.text.startswith("Simulated answer to: Describe it")
