"""A job as OpenAI's API states it: a ``chat.completion`` object, an error body, and a model name
the OpenAI way (``gpt-4o-mini``) turned into llmq's (``openai/gpt-4o-mini``).

Pure functions of a job's attributes (a Job, or any row with them), shared by every surface that
speaks OpenAI: the batch output file (``/v1/batches``) and ``POST /v1/chat/completions``.
"""

from __future__ import annotations

from typing import Any

from llmq.config.model_ids import is_model_id

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


def _unix(value: Any) -> int:
    return int(value.timestamp()) if value is not None else 0


def chat_completion_of(job: Any) -> dict[str, Any]:
    """The ``chat.completion`` a completed job answers (OpenAI's response body, exactly)."""
    prompt = job.prompt_tokens or 0
    completion = job.completion_tokens or 0
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": job.total_tokens or prompt + completion,
        "prompt_tokens_details": {"cached_tokens": job.cached_tokens or 0},
    }
    return {
        "id": f"chatcmpl-{job.id}",
        "object": "chat.completion",
        "created": _unix(job.completed_at or job.created_at),
        "model": job.served_by or job.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": job.result_text or "", "refusal": None},
                "finish_reason": job.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": usage,
        "system_fingerprint": None,
    }


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
