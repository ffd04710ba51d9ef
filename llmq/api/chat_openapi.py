"""``/v1/chat/completions`` in ``/openapi.json``: the request is OpenAI's (the model below says
what llmq accepts of it); the answers are OpenAI's ``chat.completion`` object, or a stream of
``chat.completion.chunk`` events, as OpenAI documents them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from llmq.api.chat_schemas import ChatCompletionCreate

INPUTS: tuple[type[BaseModel], ...] = (ChatCompletionCreate,)
_OPENAI_ERROR = {
    "description": 'an OpenAI-shaped error: {"error": {"message", "type", "param", "code"}}',
    "content": {"application/json": {"schema": {"type": "object"}}},
}


def chat_paths(ref: Callable[[type[BaseModel]], dict[str, str]]) -> dict[str, Any]:
    header = {"in": "header", "required": False}
    return {
        "/v1/chat/completions": {
            "post": {
                "summary": "OpenAI Chat Completions, answered by a job (waits for it, or streams it)",
                "security": [{"bearer": []}],
                "parameters": [
                    {**header, "name": "Idempotency-Key", "schema": {"type": "string", "maxLength": 255}},
                    {
                        **header,
                        "name": "X-LLMQ-Wait-Timeout",
                        "description": "seconds to wait for the job (default LLMQ_CHAT_WAIT_S)",
                        "schema": {"type": "number", "exclusiveMinimum": 0},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(ChatCompletionCreate)}},
                },
                "responses": {
                    "200": {
                        "description": "a chat.completion object, or (stream: true) text/event-stream of "
                        "chat.completion.chunk events ending in data: [DONE]; header X-LLMQ-Job-Id",
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "text/event-stream": {},
                        },
                    },
                    **{
                        str(code): _OPENAI_ERROR
                        for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 502, 503, 504)
                    },
                },
            }
        }
    }
