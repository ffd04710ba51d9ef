"""The wire shapes of the simulator's surface answers (``surface.py``): Chat Completions with
tool calls and n choices, Messages with tool_use blocks, and both streams — OpenAI's
``delta.tool_calls`` (id and name first, the arguments in fragments) and Anthropic's
``tool_use`` block start followed by ``input_json_delta`` pieces — as the official SDKs parse
them."""

from __future__ import annotations

import json
import time
from typing import Any

from llmq.simulator.surface import Choice, choices_for, stream_pieces
from llmq.simulator.text import Frames, ParsedRequest, dumps, new_id
from llmq.simulator.usage import anthropic_usage, openai_usage

__all__ = ["anthropic_message", "anthropic_stream", "openai_completion", "openai_stream", "reply"]

_FRAGMENT = 8  # characters of tool call arguments per streamed piece


def _fragments(text: str) -> list[str]:
    return [text[i : i + _FRAGMENT] for i in range(0, len(text), _FRAGMENT)] or [""]


def _tokens(choices: list[Choice]) -> int:
    return sum(c.tokens for c in choices)


def openai_completion(parsed: ParsedRequest, choices: list[Choice]) -> dict[str, Any]:
    out = []
    for c in choices:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if c.tool_calls else c.text,
            "refusal": None,
            "annotations": [],
        }
        if c.tool_calls:
            message["tool_calls"] = [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in c.tool_calls
            ]
        out.append({"index": c.index, "message": message, "logprobs": None, "finish_reason": c.finish})
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": parsed.model,
        "choices": out,
        "usage": openai_usage(parsed, _tokens(choices)),
        "service_tier": "default",
        "system_fingerprint": "fp_llmq_sim",
    }


def openai_stream(parsed: ParsedRequest, choices: list[Choice]) -> Frames:
    base: dict[str, Any] = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": parsed.model,
        "system_fingerprint": "fp_llmq_sim",
    }
    if parsed.include_usage:
        base["usage"] = None

    def frame(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return f"data: {dumps({**base, 'choices': [choice]})}\n\n".encode()

    head = [frame(c.index, {"role": "assistant", "content": "", "refusal": None}) for c in choices]
    pieces: list[bytes] = []
    for c in choices:
        for k, (call_id, name, arguments) in enumerate(c.tool_calls):
            start = {
                "index": k,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            pieces.append(frame(c.index, {"tool_calls": [start]}))
            pieces += [
                frame(c.index, {"tool_calls": [{"index": k, "function": {"arguments": f}}]})
                for f in _fragments(arguments)
            ]
        pieces += [frame(c.index, {"content": p}) for p in stream_pieces(c.text)]
    tail = [frame(c.index, {}, c.finish) for c in choices]
    if parsed.include_usage:
        usage = {**base, "choices": [], "usage": openai_usage(parsed, _tokens(choices))}
        tail.append(f"data: {dumps(usage)}\n\n".encode())
    tail.append(b"data: [DONE]\n\n")
    return head, pieces, tail


def _stop_reason(c: Choice) -> str:
    if c.tool_calls:
        return "tool_use"
    if c.stop_sequence is not None:
        return "stop_sequence"
    return "max_tokens" if c.finish == "length" else "end_turn"


def anthropic_message(parsed: ParsedRequest, choice: Choice) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if choice.text or not choice.tool_calls:
        content.append({"type": "text", "text": choice.text})
    for call_id, name, arguments in choice.tool_calls:
        content.append(
            {"type": "tool_use", "id": "toolu_" + call_id, "name": name, "input": json.loads(arguments)}
        )
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": parsed.model,
        "content": content,
        "stop_reason": _stop_reason(choice),
        "stop_sequence": choice.stop_sequence,
        "usage": anthropic_usage(parsed, choice.tokens),
    }


def anthropic_stream(parsed: ParsedRequest, choice: Choice) -> Frames:
    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {dumps({'type': name, **data})}\n\n".encode()

    start = {**anthropic_message(parsed, Choice(0, "", "stop", tokens=1)), "content": [], "stop_reason": None}
    head = [event("message_start", {"message": start}), event("ping", {})]
    pieces: list[bytes] = []
    index = 0
    if choice.text or not choice.tool_calls:
        pieces.append(
            event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        )
        pieces += [
            event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}})
            for p in stream_pieces(choice.text)
        ]
        pieces.append(event("content_block_stop", {"index": 0}))
        index = 1
    for call_id, name, arguments in choice.tool_calls:
        block = {"type": "tool_use", "id": "toolu_" + call_id, "name": name, "input": {}}
        pieces.append(event("content_block_start", {"index": index, "content_block": block}))
        pieces += [
            event(
                "content_block_delta",
                {"index": index, "delta": {"type": "input_json_delta", "partial_json": f}},
            )
            for f in _fragments(arguments)
        ]
        pieces.append(event("content_block_stop", {"index": index}))
        index += 1
    usage = anthropic_usage(parsed, choice.tokens)
    del usage["service_tier"]
    tail = [
        event(
            "message_delta",
            {
                "delta": {"stop_reason": _stop_reason(choice), "stop_sequence": choice.stop_sequence},
                "usage": usage,
            },
        ),
        event("message_stop", {}),
    ]
    return head, pieces, tail


def reply(
    openai_api: bool, parsed: ParsedRequest, reply_words: int, invalid_json: bool
) -> tuple[Frames | None, dict[str, Any] | None]:
    """The answer to ``parsed`` (which has a surface): its stream's frames, or its body."""
    assert parsed.surface is not None
    choices = choices_for(
        parsed.surface, parsed.last_user_text, reply_words, parsed.max_tokens, invalid_json=invalid_json
    )
    if parsed.stream:
        return (openai_stream(parsed, choices) if openai_api else anthropic_stream(parsed, choices[0])), None
    return None, (openai_completion(parsed, choices) if openai_api else anthropic_message(parsed, choices[0]))
