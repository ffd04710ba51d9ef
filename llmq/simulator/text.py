"""What goes in and out of the simulator as text: request checking, token counts, replies.

Both wire formats (OpenAI Chat Completions, Anthropic Messages) are reduced here to one
:class:`ParsedRequest`, so that the two APIs count prompt tokens with the same function and build
the same deterministic reply for the same conversation. Validation is as strict as the real APIs
on the fields llmq sends; a failure raises :class:`InvalidRequest`, which the server renders in the
error format of the API that was called. The reply objects and SSE frames are built here too, in
the exact shapes the official SDKs parse (errors are in :mod:`llmq.simulator.faults`).

Token accounting is deliberately simple and predictable, so that tests can assert exact numbers:

- prompt tokens: ``ceil(len(text) / 4) + 3`` per message (the Anthropic top-level ``system``
  counts as one message, like an OpenAI ``system`` message);
- completion tokens: one per reply word;
- prompt-cache tokens (cached reads, Anthropic cache writes): see :mod:`llmq.simulator.usage`.
"""

from __future__ import annotations

import json
import math
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmq.simulator.usage import anthropic_usage, openai_usage

if TYPE_CHECKING:
    from llmq.simulator.surface import Surface

OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
ANTHROPIC_ROLES = ("user", "assistant")
_FILLER = (
    "the",
    "queue",
    "keeps",
    "every",
    "job",
    "durable",
    "while",
    "workers",
    "call",
    "providers",
    "and",
    "store",
    "results",
    "so",
    "clients",
    "can",
    "poll",
    "or",
    "receive",
    "webhooks",
    "later",
    "with",
    "retries",
    "backoff",
    "and",
    "rate",
    "limits",
    "applied",
    "fairly",
    "across",
    "tenants",
    "models",
    "and",
    "regions",
    "during",
    "busy",
    "hours",
    "without",
    "losing",
    "any",
    "request",
    "even",
    "when",
    "a",
    "provider",
    "answers",
    "slowly",
    "or",
    "fails",
    "for",
    "a",
    "while",
)
_ECHO_WORDS = 6
Frames = tuple[list[bytes], list[bytes], list[bytes]]  # head, one per word, tail


class InvalidRequest(Exception):
    """A request the real API would refuse with 400 ``invalid_request_error``."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class ParsedRequest:
    """A checked request, the same for both APIs."""

    model: str
    last_user_text: str
    prompt_tokens: int
    max_tokens: int | None
    stream: bool
    include_usage: bool = False
    cache_prefix: str = ""  # the part of the prompt the provider may cache (``usage.py``)
    cached_tokens: int = 0  # of prompt_tokens, as the prompt cache decided
    cache_write_tokens: int = 0
    surface: Surface | None = None  # tools, JSON output, stop, seed, n, images (``surface.py``)


def count_prompt_tokens(texts: Iterable[str]) -> int:
    """Prompt tokens of a conversation given as one text per message."""
    return sum(math.ceil(len(text) / 4) + 3 for text in texts)


def reply_words(
    last_user_text: str, words: int, max_tokens: int | None, salt: str = "", shift: int = 0
) -> tuple[list[str], bool]:
    """The reply as words (one word = one completion token), and whether ``max_tokens`` cut it.

    Deterministic: "Simulated answer to: <first words of the prompt>" then filler words chosen by
    a checksum of the prompt (and ``salt``: a seed), moved on by ``shift`` (a choice's index
    times a stride, so the choices of one answer differ), ``words`` in all.
    """
    echo = last_user_text.split()[:_ECHO_WORDS]
    out = ["Simulated", "answer", "to:", *echo] if echo else ["Simulated", "answer."]
    start = (zlib.crc32((last_user_text + salt).encode()) + shift) % len(_FILLER)
    i = 0
    while len(out) < words:
        out.append(_FILLER[(start + i) % len(_FILLER)])
        i += 1
    out = out[: max(words, 1)]
    if max_tokens is not None and len(out) > max_tokens:
        return out[:max_tokens], True
    return out, False


def as_deltas(words: list[str]) -> list[str]:
    """Stream pieces that join back to ``" ".join(words)``: one per word (token)."""
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _content_text(content: object, where: str, *, anthropic: bool) -> str:
    """Text of a message content: a string, or a list of parts/blocks (text parts kept)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        if anthropic:
            raise InvalidRequest(f"{where}: Input should be a valid string or list of blocks")
        raise InvalidRequest(
            f"Invalid type for '{where}': expected one of a string or array of objects, "
            f"but got {_type_name(content)} instead.",
            param=where,
            code="invalid_type",
        )
    texts: list[str] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            if anthropic:
                raise InvalidRequest(f"{where}.{i}: Input should be a valid content block")
            raise InvalidRequest(
                f"Invalid type for '{where}[{i}]': expected an object with a 'type', "
                f"but got {_type_name(part)} instead.",
                param=f"{where}[{i}]",
                code="invalid_type",
            )
        if part["type"] == "text":
            text = part.get("text")
            if not isinstance(text, str):
                sep = "." if anthropic else "["
                end = "" if anthropic else "]"
                raise InvalidRequest(f"{where}{sep}{i}{end}.text: Field required", param=f"{where}[{i}].text")
            texts.append(text)
    return "\n".join(texts)


def parse_openai(body: dict[str, Any]) -> ParsedRequest:
    """Check a Chat Completions request body the way the real API does."""
    model = body.get("model")
    if model is None:
        raise InvalidRequest(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "Invalid 'model': expected a non-empty string.", param="model", code="invalid_value"
        )
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list):
        raise InvalidRequest(
            f"Invalid type for 'messages': expected an array, but got {_type_name(messages)} instead.",
            param="messages",
            code="invalid_type",
        )
    if not messages:
        raise InvalidRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            param="messages",
            code="empty_array",
        )
    texts: list[str] = []
    last_user = ""
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(
                f"Invalid type for '{where}': expected an object, but got {_type_name(message)} instead.",
                param=where,
                code="invalid_type",
            )
        role = message.get("role")
        if role is None:
            raise InvalidRequest(
                f"Missing required parameter: '{where}.role'.",
                param=f"{where}.role",
                code="missing_required_parameter",
            )
        if role not in OPENAI_ROLES:
            raise InvalidRequest(
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', "
                "'function', 'tool', and 'developer'.",
                param=f"{where}.role",
                code="invalid_value",
            )
        content = message.get("content")
        if content is None and role == "assistant":
            text = ""
        elif "content" not in message:
            raise InvalidRequest(
                f"Missing required parameter: '{where}.content'.",
                param=f"{where}.content",
                code="missing_required_parameter",
            )
        else:
            text = _content_text(content, f"{where}.content", anthropic=False)
        texts.append(text)
        if role == "user":
            last_user = text
    max_tokens = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value):
            raise InvalidRequest(
                f"Invalid type for '{name}': expected an integer, but got {_type_name(value)} instead.",
                param=name,
                code="invalid_type",
            )
        if value < 1:
            raise InvalidRequest(
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got "
                f"{value} instead.",
                param=name,
                code="integer_below_min_value",
            )
        max_tokens = value if max_tokens is None else min(max_tokens, value)
    _check_temperature(body.get("temperature"), 2, anthropic=False)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest(
            f"Invalid type for 'stream': expected a boolean, but got {_type_name(stream)} instead.",
            param="stream",
            code="invalid_type",
        )
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return ParsedRequest(
        model,
        last_user or texts[-1],
        count_prompt_tokens(texts),
        max_tokens,
        bool(stream),
        include_usage,
        cache_prefix=texts[0],
    )


def parse_anthropic(body: dict[str, Any]) -> ParsedRequest:
    """Check a Messages request body the way the real API does."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "model: Field required" if model is None else "model: Input should be a valid string"
        )
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: Field required")
    if not _is_int(max_tokens):
        raise InvalidRequest("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise InvalidRequest("max_tokens: Input should be greater than or equal to 1")
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("messages: Field required")
    if not isinstance(messages, list):
        raise InvalidRequest("messages: Input should be a valid list")
    if not messages:
        raise InvalidRequest("messages: at least one message is required")
    texts: list[str] = []
    system = body.get("system")
    if system is not None:
        texts.append(_content_text(system, "system", anthropic=True))
    last_user = ""
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where}: Input should be a valid dictionary")
        role = message.get("role")
        if role not in ANTHROPIC_ROLES:
            if role == "system":
                raise InvalidRequest(
                    f"{where}.role: Input should be 'user' or 'assistant'. Unexpected role "
                    '"system". The Messages API accepts a top-level `system` parameter, not '
                    '"system" as an input message role.'
                )
            raise InvalidRequest(f"{where}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise InvalidRequest(f"{where}.content: Field required")
        text = _content_text(message["content"], f"{where}.content", anthropic=True)
        texts.append(text)
        if role == "user":
            last_user = text
    _check_temperature(body.get("temperature"), 1, anthropic=True)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream: Input should be a valid boolean")
    return ParsedRequest(
        model,
        last_user or texts[-1],
        count_prompt_tokens(texts),
        max_tokens,
        bool(stream),
        cache_prefix=texts[0] if system is not None else "",
    )


def _check_temperature(value: object, top: int, *, anthropic: bool) -> None:
    if value is None:
        return
    if not _is_number(value):
        if anthropic:
            raise InvalidRequest("temperature: Input should be a valid number")
        raise InvalidRequest(
            f"Invalid type for 'temperature': expected a decimal, but got {_type_name(value)} instead.",
            param="temperature",
            code="invalid_type",
        )
    assert isinstance(value, (int, float))
    if value < 0:
        if anthropic:
            raise InvalidRequest("temperature: Input should be greater than or equal to 0")
        raise InvalidRequest(
            "Invalid 'temperature': decimal below minimum value. Expected a value >= 0, but got "
            f"{value} instead.",
            param="temperature",
            code="decimal_below_min_value",
        )
    if value > top:
        if anthropic:
            raise InvalidRequest(f"temperature: Input should be less than or equal to {top}")
        raise InvalidRequest(
            f"Invalid 'temperature': decimal above maximum value. Expected a value <= {top}, but "
            f"got {value} instead.",
            param="temperature",
            code="decimal_above_max_value",
        )


# --- replies on the wire ------------------------------------------------------------------


def dumps(obj: Any) -> str:
    """Compact JSON, as the providers send it."""
    return json.dumps(obj, separators=(",", ":"))


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def openai_completion(parsed: ParsedRequest, reply: str, n_words: int, cut: bool) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": parsed.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "length" if cut else "stop",
            }
        ],
        "usage": openai_usage(parsed, n_words),
        "service_tier": "default",
        "system_fingerprint": "fp_llmq_sim",
    }


def anthropic_message(parsed: ParsedRequest, reply: str, n_words: int, cut: bool) -> dict[str, Any]:
    """A Messages ``message`` object."""
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": parsed.model,
        "content": [{"type": "text", "text": reply}],
        "stop_reason": "max_tokens" if cut else "end_turn",
        "stop_sequence": None,
        "usage": anthropic_usage(parsed, n_words),
    }


def openai_stream(parsed: ParsedRequest, words: list[str], cut: bool) -> Frames:
    """``data:`` frames: role chunk, one chunk per word, finish chunk, [usage chunk], [DONE]."""
    base: dict[str, Any] = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": parsed.model,
        "service_tier": "default",
        "system_fingerprint": "fp_llmq_sim",
    }
    if parsed.include_usage:
        base["usage"] = None

    # Every chunk is the same object but for its delta and finish_reason: encode the rest once.
    opening = f'data: {dumps(base)[:-1]},"choices":[{{"index":0,"delta":'

    def frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return f'{opening}{dumps(delta)},"logprobs":null,"finish_reason":{dumps(finish)}}}]}}\n\n'.encode()

    head = [frame({"role": "assistant", "content": "", "refusal": None})]
    pieces = [frame({"content": piece}) for piece in as_deltas(words)]
    tail = [frame({}, "length" if cut else "stop")]
    if parsed.include_usage:
        usage = {**base, "choices": [], "usage": openai_usage(parsed, len(words))}
        tail.append(f"data: {dumps(usage)}\n\n".encode())
    tail.append(b"data: [DONE]\n\n")
    return head, pieces, tail


def anthropic_stream(parsed: ParsedRequest, words: list[str], cut: bool) -> Frames:
    """The Messages event sequence, one ``content_block_delta`` per word."""

    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {dumps({'type': name, **data})}\n\n".encode()

    start = {**anthropic_message(parsed, "", 1, False), "content": [], "stop_reason": None}
    head = [
        event("message_start", {"message": start}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        event("ping", {}),
    ]
    pieces = [
        event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}})
        for p in as_deltas(words)
    ]
    usage = anthropic_usage(parsed, len(words))
    del usage["service_tier"]
    tail = [
        event("content_block_stop", {"index": 0}),
        event(
            "message_delta",
            {
                "delta": {"stop_reason": "max_tokens" if cut else "end_turn", "stop_sequence": None},
                "usage": usage,
            },
        ),
        event("message_stop", {}),
    ]
    return head, pieces, tail
