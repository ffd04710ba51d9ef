"""The ``chat.completion.chunk`` objects of a job's stream, and the SSE framing. The
``chat.completion`` object itself, and the pieces both share, are ``models/openai_shapes.py``."""

from __future__ import annotations

import json
from typing import Any

from llmq.models.openai_shapes import SYSTEM_FINGERPRINT, completion_id, model_of, usage_of


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
