"""A job as OpenAI's API states it: a ``chat.completion`` object, an error body, and a model name
the OpenAI way (``gpt-4o-mini``) turned into llmq's (``openai/gpt-4o-mini``).

Pure functions of the job object (``job_public``) or of a job's row, shared by every surface
that speaks OpenAI: ``POST /v1/chat/completions`` (and its stream's chunks, ``api/chat_shape.py``)
and the batch output file (``/v1/batches``). The id is ``chatcmpl-<job id>``, so an answer leads
back to its job (``/v1/jobs/<id>``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from llmq.config.model_ids import is_model_id
from llmq.models.base import isoformat
from llmq.models.tables import public_result, public_usage

DEFAULT_PROVIDER = "openai"
# A failed job's error type → the HTTP status OpenAI would have answered the request with.
_STATUS_OF_ERROR = {
    "invalid_request": 400,
    "context_length": 400,
    "content_policy": 400,
    "auth": 401,
    "not_found": 404,
    "rate_limit": 429,
    "quota_exceeded": 429,
    "timeout": 408,
    "budget_exceeded": 402,
    "cancelled": 499,
    "provider_error": 502,
    "connection_error": 502,
}


def llmq_model(name: str) -> str:
    """``"gpt-4o-mini"`` → ``"openai/gpt-4o-mini"``; an llmq id (``"anthropic/claude-…"``,
    ``"local/llama3"``) is kept as it is."""
    return name if is_model_id(name) else f"{DEFAULT_PROVIDER}/{name}"


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


def chat_completion_of(job: Any) -> dict[str, Any]:
    """The ``chat.completion`` of a completed job row (a Job, or a row with its columns): what a
    batch's output line carries, the same object ``POST /v1/chat/completions`` answers."""
    return completion(
        {
            "id": job.id,
            "created_at": isoformat(job.created_at),
            "model": job.model,
            "served_by": job.served_by,
            "result": public_result(job),
            "usage": public_usage(job),
        }
    )


def error_status_of(job: Any) -> int:
    """The HTTP status of a failed job's request, as OpenAI would have answered it."""
    return _STATUS_OF_ERROR.get(job.error_type or "", 500)


def error_body_of(job: Any) -> dict[str, Any]:
    """OpenAI's error body for a failed job: ``{"error": {"message", "type", "param", "code"}}``."""
    return {
        "error": {
            "message": job.error_message or "",
            "type": job.error_type or "server_error",
            "param": None,
            "code": job.error_type,
        }
    }
