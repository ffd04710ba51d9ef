"""A job as OpenAI's ``chat.completion`` object, and the ``chat.completion.chunk`` objects of its
stream. The id is ``chatcmpl-<job id>``, so an answer leads back to its job (``/v1/jobs/<id>``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

SYSTEM_FINGERPRINT = "llmq"
# The providers' stop reasons as OpenAI names them (Anthropic's are normalised by the worker; these
# cover what may still arrive).
_FINISH_REASONS = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "tool_use": "tool_calls",
    "content_filter": "content_filter",
    "refusal": "content_filter",
}


def completion_id(job_id: str) -> str:
    return f"chatcmpl-{job_id}"


def created_of(job: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(job["created_at"].replace("Z", "+00:00")).timestamp())


def finish_reason_of(job: dict[str, Any]) -> str:
    result = job.get("result") or {}
    if result.get("tool_calls"):
        return "tool_calls"
    return _FINISH_REASONS.get(result.get("finish_reason") or "stop", "stop")


def usage_of(job: dict[str, Any]) -> dict[str, Any]:
    usage = job.get("usage") or {}
    return {
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
        "prompt_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def tool_calls_of(job: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The result's tool calls in OpenAI's shape (``arguments`` a JSON string)."""
    calls = (job.get("result") or {}).get("tool_calls")
    if not calls:
        return None
    shaped = []
    for call in calls:
        function = call.get("function") or {"name": call.get("name"), "arguments": call.get("arguments")}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if arguments is not None else {})
        shaped.append(
            {
                "id": call.get("id"),
                "type": "function",
                "function": {"name": function.get("name"), "arguments": arguments},
            }
        )
    return shaped


def model_of(job: dict[str, Any]) -> str:
    return str(job.get("served_by") or job["model"])


def completion(job: dict[str, Any]) -> dict[str, Any]:
    """The ``chat.completion`` object of a completed job."""
    result = job.get("result") or {}
    tool_calls = tool_calls_of(job)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.get("text") if (result.get("text") or not tool_calls) else None,
        "refusal": None,
        "annotations": [],
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id(job["id"]),
        "object": "chat.completion",
        "created": created_of(job),
        "model": model_of(job),
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason_of(job)}
        ],
        "usage": usage_of(job),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


class ChunkMaker:
    """The ``chat.completion.chunk`` objects of one stream, with the fields every chunk repeats."""

    def __init__(self, job_id: str, created: int, model: str, include_usage: bool) -> None:
        self.base: dict[str, Any] = {
            "id": completion_id(job_id),
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        self.include_usage = include_usage

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk = {
            **self.base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI: null on every chunk but the last
        return chunk

    def usage(self, job: dict[str, Any]) -> dict[str, Any]:
        return {**self.base, "model": model_of(job), "choices": [], "usage": usage_of(job)}


def sse(data: dict[str, Any] | str) -> str:
    """One Server-Sent Event; OpenAI sends no ``event:`` line, only ``data:``."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"
