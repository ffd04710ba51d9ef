"""What goes into a provider batch and what comes out of it, as plain data: no SDK call here.

- OpenAI Batch API: an input JSONL file, one line per request
  ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": <chat request>}``;
  results in an output file (lines ``{"id", "custom_id", "response": {"status_code",
  "request_id", "body"}, "error": null}``) and an error file (the same with a non-200
  ``status_code`` and an error body, or ``"response": null, "error": {"code": "batch_expired",
  ...}`` for a line the window closed on).
- Anthropic Message Batches API: ``requests=[{"custom_id", "params": <messages request>}]``;
  results JSONL lines ``{"custom_id", "result": {"type": "succeeded", "message"} | {"type":
  "errored", "error": {"type": "error", "error": {"type", "message"}}} | {"type": "canceled"} |
  {"type": "expired"}}``.

A line carries the whole request surface, as the provider's normal call would send it: content
parts (images), tool turns, and the options (tools, tool_choice, response_format, stop, seed,
top_p, n), through the same mappings (``openai_surface.py`` / ``anthropic_surface.py``). Each
result line becomes a :class:`LineResult`: a :class:`ProviderResponse` (its tool calls and the
choices of ``n > 1`` read back as from a normal call), a typed :class:`ProviderError` (whose
``retryable`` the retry policy reads, as for a normal call), or ``unfinished`` (expired or
cancelled before it ran: the job goes back to the normal path). A ``custom_id`` is the job's id.
The check of a ``response_format`` is the caller's (``tasks/provider_batches.py``), as it is
``Provider.complete``'s for a normal call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Final

from anthropic.types import Message
from openai.types.chat import ChatCompletion

from llmq.workers.providers import anthropic_surface, openai_surface
from llmq.workers.providers.anthropic_provider import from_message
from llmq.workers.providers.base import ChatMessage, ProviderRequest, ProviderResponse
from llmq.workers.providers.errors import (
    InvalidRequestError,
    ProviderError,
    ProviderServerError,
    error_for_status,
)

__all__ = [
    "BatchLine",
    "LineResult",
    "anthropic_requests",
    "openai_jsonl",
    "parse_anthropic_result",
    "parse_openai_results",
]

OPENAI_ENDPOINT: Final = "/v1/chat/completions"
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")
_NO_USAGE: Final = {"input_tokens": 0, "output_tokens": 0}


@dataclass(frozen=True)
class BatchLine:
    custom_id: str  # the job's id
    request: ProviderRequest


@dataclass(frozen=True)
class LineResult:
    custom_id: str
    response: ProviderResponse | None = None
    error: ProviderError | None = None
    unfinished: str | None = None  # "expired" | "canceled": never ran


def _openai_message(m: ChatMessage) -> dict[str, Any]:
    if m.role in ("system", "user"):
        return {"role": m.role, "content": m.content}
    if m.role == "assistant":
        turn: dict[str, Any] = {"role": "assistant", "content": m.content}
        if m.tool_calls:
            turn["tool_calls"] = m.tool_calls
        return turn
    if m.role == "tool" and m.tool_call_id is not None:
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    raise InvalidRequestError(f"unsupported message role {m.role!r}")


def openai_body(request: ProviderRequest) -> dict[str, Any]:
    """The Chat Completions request of one line, as ``providers/openai_provider.py`` sends it."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_openai_message(m) for m in request.messages],
    }
    if request.max_tokens is not None:
        key = "max_completion_tokens" if _REASONING_MODEL.match(request.model) else "max_tokens"
        body[key] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.user is not None:
        body["user"] = request.user
    if request.options is not None:
        body.update(openai_surface.request_options(request.options))
    return body


def openai_jsonl(lines: Iterable[BatchLine]) -> bytes:
    """The input file of an OpenAI batch."""
    out = [
        json.dumps(
            {
                "custom_id": line.custom_id,
                "method": "POST",
                "url": OPENAI_ENDPOINT,
                "body": openai_body(line.request),
            },
            separators=(",", ":"),
        )
        for line in lines
    ]
    return ("\n".join(out) + "\n").encode()


def anthropic_params(request: ProviderRequest, default_max_tokens: int) -> dict[str, Any]:
    """The Messages request of one batch entry, as ``providers/anthropic_provider.py`` sends it
    (what the SDK sends as ``extra_body`` is a plain key of the entry's params here)."""
    system, messages = anthropic_surface.conversation(request.messages)
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens if request.max_tokens is not None else default_max_tokens,
        "messages": messages,
    }
    if system is not None:
        params["system"] = system
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.user is not None:
        params["metadata"] = {"user_id": request.user}
    if request.options is not None:
        options, extra = anthropic_surface.request_options(request.options)
        params.update(options)
        params.update(extra)
    return params


def anthropic_requests(lines: Iterable[BatchLine], default_max_tokens: int) -> list[dict[str, Any]]:
    return [
        {"custom_id": line.custom_id, "params": anthropic_params(line.request, default_max_tokens)}
        for line in lines
    ]


# --- results ------------------------------------------------------------------------------------


def parse_openai_results(text: str) -> list[LineResult]:
    """Every line of an OpenAI output or error file (blank lines skipped)."""
    return [_openai_line(json.loads(raw)) for raw in text.splitlines() if raw.strip()]


def _openai_line(line: dict[str, Any]) -> LineResult:
    custom_id = str(line.get("custom_id"))
    response = line.get("response")
    error = line.get("error")
    if not response:
        code = (error or {}).get("code") if isinstance(error, dict) else None
        if code in ("batch_expired", "batch_cancelled"):
            return LineResult(custom_id, unfinished="expired" if code == "batch_expired" else "canceled")
        message = (error or {}).get("message") if isinstance(error, dict) else None
        return LineResult(custom_id, error=ProviderServerError(f"openai batch: {message or 'no response'}"))
    status = int(response.get("status_code") or 0)
    body = response.get("body") or {}
    if status != 200:
        inner = body.get("error") if isinstance(body, dict) else None
        inner = inner if isinstance(inner, dict) else {}
        message = f"openai batch: HTTP {status}: {inner.get('message') or 'error'}"
        return LineResult(
            custom_id, error=error_for_status(status, message, code=inner.get("code"), kind=inner.get("type"))
        )
    try:
        return LineResult(custom_id, response=_openai_response(body))
    except ProviderError as exc:
        return LineResult(custom_id, error=exc)


def _openai_response(body: dict[str, Any]) -> ProviderResponse:
    """A line's answer read as a normal call's is (``openai_surface.from_completion``: the first
    choice, every choice of ``n > 1``, the tool calls)."""
    return openai_surface.from_completion(ChatCompletion.construct(**body), "openai batch")


def parse_anthropic_result(line: dict[str, Any]) -> LineResult:
    """One line of an Anthropic batch's results."""
    custom_id = str(line.get("custom_id"))
    result = line.get("result") or {}
    kind = result.get("type")
    if kind == "succeeded":
        # Read as a normal call's answer is: the provider's own reader, and its tool_use blocks.
        answer = Message.construct(**{"content": [], "usage": _NO_USAGE, **(result.get("message") or {})})
        response = replace(from_message(answer), tool_calls=anthropic_surface.tool_calls_of(answer))
        return LineResult(custom_id, response=response)
    if kind in ("expired", "canceled"):
        return LineResult(custom_id, unfinished=str(kind))
    outer = result.get("error") or {}
    nested = outer.get("error")
    inner: dict[str, Any] = nested if isinstance(nested, dict) else outer
    message = f"anthropic batch: {inner.get('type') or 'error'}: {inner.get('message') or 'errored'}"
    return LineResult(custom_id, error=error_for_status(None, message, kind=inner.get("type")))
