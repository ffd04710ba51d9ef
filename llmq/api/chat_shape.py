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


def choices_of(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The result's choices (``{index, text, finish_reason, tool_calls}``): every one of a job that
    asked for ``n`` > 1, else the one the result is."""
    result = job.get("result") or {}
    if result.get("choices"):
        return list(result["choices"])
    return [{"index": 0, **{k: result.get(k) for k in ("text", "finish_reason", "tool_calls")}}]


def finish_reason_of(choice: dict[str, Any]) -> str:
    if choice.get("tool_calls"):
        return "tool_calls"
    return _FINISH_REASONS.get(choice.get("finish_reason") or "stop", "stop")


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


def tool_calls_of(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A choice's tool calls in OpenAI's shape (the job keeps them so: ``arguments`` a JSON string)."""
    calls = choice.get("tool_calls")
    if not calls:
        return None
    return [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
        }
        for c in calls
    ]


def model_of(job: dict[str, Any]) -> str:
    return str(job.get("served_by") or job["model"])


def message_of(choice: dict[str, Any]) -> dict[str, Any]:
    tool_calls = tool_calls_of(choice)
    text = choice.get("text") or ""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not tool_calls else None,  # null beside tool calls, as OpenAI
        "refusal": None,
        "annotations": [],
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def completion(job: dict[str, Any]) -> dict[str, Any]:
    """The ``chat.completion`` object of a completed job."""
    return {
        "id": completion_id(job["id"]),
        "object": "chat.completion",
        "created": created_of(job),
        "model": model_of(job),
        "choices": [
            {
                "index": c["index"],
                "message": message_of(c),
                "logprobs": None,
                "finish_reason": finish_reason_of(c),
            }
            for c in choices_of(job)
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

    def delta(
        self, delta: dict[str, Any], finish_reason: str | None = None, index: int = 0
    ) -> dict[str, Any]:
        chunk = {
            **self.base,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
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
