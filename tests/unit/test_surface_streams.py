"""Tool calls and choices assembled from raw SSE bytes, as the providers read them (the SDK only
opens the stream): OpenAI's ``delta.tool_calls`` fragments and interleaved choices, Anthropic's
``tool_use`` blocks and ``input_json_delta`` pieces. And the fallbacks a job's options rule out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest

from llmq.config.providers import ProviderSpec
from llmq.config.providers_file import ModelConfig, ProvidersConfig
from llmq.models.records import ClaimedJob
from llmq.tasks.gate.route import model_chain
from llmq.workers.providers import anthropic_surface, openai_surface
from llmq.workers.providers.anthropic_provider import normalise_stop_reason
from llmq.workers.providers.base import ProviderResponse, StreamMeter
from llmq.workers.providers.errors import ProviderError, ProviderServerError, ProviderStreamError


async def _body(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        # split every event in two reads: the line splitting must not care
        yield event[: len(event) // 2]
        yield event[len(event) // 2 :]


def _openai(chunks: list[dict[str, Any]]) -> list[bytes]:
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def _chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"model": "m", "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def _read_openai(chunks: list[dict[str, Any]]) -> tuple[ProviderResponse, list[str]]:
    progress: list[str] = []
    request = httpx2.Request("POST", "http://sim/v1/chat/completions")
    response = asyncio.run(
        openai_surface.consume_stream(
            _body(_openai(chunks)), request, lambda text, _: progress.append(text), StreamMeter(), "openai"
        )
    )
    return response, progress


def test_openai_tool_call_fragments_are_joined_per_call() -> None:
    response, _ = _read_openai(
        [
            _chunk(0, {"role": "assistant", "content": None}),
            _chunk(
                0,
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                        }
                    ]
                },
            ),
            _chunk(0, {"tool_calls": [{"index": 0, "function": {"arguments": '{"x": '}}]}),
            _chunk(
                0,
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "g", "arguments": "{}"},
                        }
                    ]
                },
            ),
            _chunk(0, {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            _chunk(0, {}, "tool_calls"),
            {"model": "m", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 4}},
        ]
    )
    assert response.finish_reason == "tool_calls" and response.text == ""
    assert response.tool_calls == [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    assert (response.prompt_tokens, response.completion_tokens) == (7, 4)
    assert response.choices is None


def test_openai_interleaved_choices_are_kept_apart_and_only_the_first_reports_progress() -> None:
    response, progress = _read_openai(
        [
            _chunk(0, {"content": "Hel"}),
            _chunk(1, {"content": "Other"}),
            _chunk(0, {"content": "lo"}),
            _chunk(1, {}, "length"),
            _chunk(0, {}, "stop"),
        ]
    )
    assert response.text == "Hello" and response.finish_reason == "stop"
    assert response.choices == [
        {"index": 0, "text": "Hello", "finish_reason": "stop", "tool_calls": None},
        {"index": 1, "text": "Other", "finish_reason": "length", "tool_calls": None},
    ]
    assert progress == ["Hel", "Hello"]


def test_openai_stream_without_a_finish_for_every_choice_is_a_stream_error() -> None:
    with pytest.raises(ProviderStreamError):
        _read_openai([_chunk(0, {"content": "a"}, "stop"), _chunk(1, {"content": "b"})])


def _anthropic(events: list[dict[str, Any]]) -> list[bytes]:
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


def _read_anthropic(events: list[dict[str, Any]]) -> ProviderResponse:
    def stream_error(event: dict[str, Any]) -> ProviderError:
        return ProviderServerError(str(event))

    def prompt_tokens(usage: Any) -> int:
        return int(usage.get("input_tokens") or 0)

    return asyncio.run(
        anthropic_surface.consume_stream(
            _body(_anthropic(events)),
            lambda *_: None,
            StreamMeter(),
            "anthropic",
            normalise_stop_reason,
            stream_error,
            prompt_tokens,
        )
    )


def test_anthropic_tool_use_blocks_are_assembled_from_input_json_deltas() -> None:
    response = _read_anthropic(
        [
            {
                "type": "message_start",
                "message": {"model": "claude", "usage": {"input_tokens": 9, "output_tokens": 1}},
            },
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Let me check."},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": 'ris"}'},
            },
            {"type": "content_block_stop", "index": 1},
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}},
            },
            {"type": "content_block_stop", "index": 2},
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
            {"type": "message_stop"},
        ]
    )
    assert response.text == "Let me check."
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == [
        {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"city": "Paris"}'}},
        {"id": "toolu_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    assert (response.prompt_tokens, response.completion_tokens) == (9, 12)


def test_anthropic_stream_without_message_stop_is_a_stream_error() -> None:
    with pytest.raises(ProviderStreamError):
        _read_anthropic([{"type": "message_start", "message": {"usage": {}}}])


# --- fallbacks the options rule out --------------------------------------------------------------


def _claim(options: dict[str, Any] | None) -> ClaimedJob:
    return ClaimedJob(
        job_id="job_1",
        tenant_id="t",
        lease_token="l",
        attempt_number=1,
        max_attempts=5,
        model="openai/a",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=None,
        temperature=None,
        user=None,
        deadline_at=None,
        requested_model="openai/a",
        request_options=options,
    )


@pytest.mark.parametrize(
    ("options", "chain"),
    [
        (None, ["openai/a", "anthropic/b", "openai/c"]),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            ["openai/a", "anthropic/b", "openai/c"],
        ),
        ({"seed": 1}, ["openai/a", "openai/c"]),
        ({"n": 2}, ["openai/a", "openai/c"]),
    ],
)
def test_providers_file_fallbacks_that_cannot_serve_the_options_are_skipped(
    options: dict[str, Any] | None, chain: list[str]
) -> None:
    providers = ProvidersConfig(models={"openai/a": ModelConfig(fallbacks=["anthropic/b", "openai/c"])})
    specs = {
        "openai": ProviderSpec("openai", "openai", None, "k"),
        "anthropic": ProviderSpec("anthropic", "anthropic", None, "k"),
    }
    registry = SimpleNamespace(spec=specs.__getitem__)
    rt: Any = SimpleNamespace(providers=providers, registry=registry)
    assert model_chain(rt, _claim(options))[0] == chain
