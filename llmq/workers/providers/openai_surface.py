"""The full request surface on Chat Completions: tools, response_format, stop, seed, top_p, n.

A job's options are stored in OpenAI's own spelling, so the request side is a pass-through;
the work here is reading the answer back: tool calls (plain, and assembled from the stream's
``delta.tool_calls`` pieces, which carry the id and name once and the arguments in fragments)
and the choices of ``n > 1``. A job without options never comes here: the provider's plain path
is the one the CPU benchmark measures.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx2
import openai

from llmq.workers.providers.base import ProgressCallback, ProviderResponse, StreamMeter, sse_data
from llmq.workers.providers.errors import ProviderServerError, ProviderStreamError
from llmq.workers.providers.usage import ProviderUsage

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion

__all__ = ["consume_stream", "from_completion", "request_options"]

_PASSED = ("tools", "tool_choice", "response_format", "stop", "seed", "top_p", "n")


def request_options(options: dict[str, Any]) -> dict[str, Any]:
    """The SDK's keyword arguments for a job's options (the same names and shapes)."""
    return {name: options[name] for name in _PASSED if options.get(name) is not None}


def _tool_calls(calls: Any) -> list[dict[str, Any]] | None:
    if not calls:
        return None
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.function.name, "arguments": call.function.arguments or ""},
        }
        for call in calls
        if getattr(call, "function", None) is not None
    ] or None


def from_completion(completion: ChatCompletion, name: str) -> ProviderResponse:
    """A completion of a request with options: its first choice as the answer, every choice
    listed when there are more, and the tool calls of each."""
    usage = completion.usage
    prompt_tokens = usage.prompt_tokens if usage else 0
    completion_tokens = usage.completion_tokens if usage else 0
    details = usage.prompt_tokens_details if usage else None
    cached = (details.cached_tokens or 0) if details else 0
    if not completion.choices:
        error = ProviderServerError(f"{name}: the answer had no choices")
        if usage:
            error.billed = ProviderUsage(prompt_tokens, completion_tokens, cached)
        raise error
    choices: list[dict[str, Any]] = []
    for choice in sorted(completion.choices, key=lambda c: c.index):
        text = choice.message.content or ""
        finish = choice.finish_reason or "unknown"
        if not text and choice.message.refusal:
            finish = "content_filter"
        choices.append(
            {
                "index": choice.index,
                "text": text,
                "finish_reason": finish,
                "tool_calls": _tool_calls(choice.message.tool_calls),
            }
        )
    first = choices[0]
    return ProviderResponse(
        text=first["text"],
        finish_reason=first["finish_reason"],
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        model=completion.model or None,
        cached_tokens=cached,
        tool_calls=first["tool_calls"],
        choices=choices if len(choices) > 1 else None,
    )


class _Choice:
    """One choice being assembled from the stream."""

    __slots__ = ("calls", "finish", "text")

    def __init__(self) -> None:
        self.text = ""
        self.finish: str | None = None
        self.calls: dict[int, dict[str, Any]] = {}  # by the delta's tool call index

    def add_calls(self, deltas: list[dict[str, Any]]) -> None:
        for delta in deltas:
            call = self.calls.setdefault(
                int(delta.get("index", len(self.calls))),
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if delta.get("id"):
                call["id"] = delta["id"]
            function = delta.get("function") or {}
            if function.get("name"):
                call["function"]["name"] += function["name"]
            if function.get("arguments"):
                call["function"]["arguments"] += function["arguments"]

    def tool_calls(self) -> list[dict[str, Any]] | None:
        return [self.calls[i] for i in sorted(self.calls)] or None


async def consume_stream(
    chunks: AsyncIterator[bytes],
    http_request: httpx2.Request,
    on_progress: ProgressCallback,
    meter: StreamMeter,
    name: str,
) -> ProviderResponse:
    """A streamed answer to a request with options: the text of choice 0 is reported as it
    comes (as on the plain path); tool call pieces and the other choices are assembled."""
    choices: dict[int, _Choice] = {}
    pieces = 0
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    async for data in sse_data(chunks):
        if data.startswith(b"[DONE]"):
            continue
        chunk = json.loads(data)
        if not isinstance(chunk, dict):
            continue
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else None
            raise openai.APIError(
                message if isinstance(message, str) and message else "An error occurred during streaming",
                request=http_request,
                body=error,
            )
        model = chunk.get("model") or model
        usage = chunk.get("usage")
        if usage:
            prompt_tokens = meter.prompt_tokens = usage.get("prompt_tokens")
            completion_tokens = meter.completion_tokens = usage.get("completion_tokens")
            meter.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        for raw in chunk.get("choices") or ():
            index = int(raw.get("index", 0))
            choice = choices.get(index) or choices.setdefault(index, _Choice())
            delta = raw.get("delta") or {}
            content = delta.get("content")
            if content:
                choice.text += content
                pieces += 1
                meter.pieces = pieces
                if index == 0:
                    on_progress(choice.text, pieces)
            if delta.get("tool_calls"):
                choice.add_calls(delta["tool_calls"])
                pieces += 1
                meter.pieces = pieces
            if raw.get("finish_reason"):
                choice.finish = raw["finish_reason"]
    if not choices or any(c.finish is None for c in choices.values()):
        raise ProviderStreamError(
            f"{name}: the stream ended before a finish_reason ({pieces} pieces received)"
        )
    listed: list[dict[str, Any]] = [
        {"index": i, "text": c.text, "finish_reason": c.finish, "tool_calls": c.tool_calls()}
        for i, c in sorted(choices.items())
    ]
    first = listed[0]
    return ProviderResponse(
        text=first["text"],
        finish_reason=first["finish_reason"],
        prompt_tokens=prompt_tokens or 0,
        completion_tokens=completion_tokens if completion_tokens is not None else pieces,
        model=model,
        cached_tokens=meter.cached_tokens,
        tool_calls=first["tool_calls"],
        choices=listed if len(listed) > 1 else None,
    )
