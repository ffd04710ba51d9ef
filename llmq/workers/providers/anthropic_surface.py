"""The full request surface mapped onto the Anthropic Messages API, and its answers mapped back.

The job speaks OpenAI's spelling; this module is the faithful translation::

    content parts   text → text block; image_url data:<type>;base64,<b64> → image block with a
                    base64 source; image_url http(s) → image block with a url source
    assistant       tool_calls → tool_use blocks (id, name, input = the parsed arguments)
    tool messages   → tool_result blocks in a user turn (consecutive ones share that turn)
    tools           function {name, description, parameters} → {name, description, input_schema}
    tool_choice     auto → auto, none → none, required → any, {"function": {name}} → tool name
    stop            → stop_sequences
    top_p           → top_p
    response_format json_schema → output_config.format {type: json_schema, schema}: Anthropic's
                    own structured outputs, so the answer is the JSON text itself (not a forced
                    tool call, as LiteLLM did before the API had it); json_object, seed and
                    n > 1 have no equivalent and are refused at submit (``workers/capabilities``)

Back: ``tool_use`` blocks become OpenAI tool calls (arguments: the input as JSON text), in a
plain answer and assembled from a stream's ``input_json_delta`` pieces alike.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from llmq.workers.providers.base import (
    ChatMessage,
    ProgressCallback,
    ProviderResponse,
    StreamMeter,
    sse_data,
)
from llmq.workers.providers.errors import InvalidRequestError, ProviderError, ProviderStreamError

if TYPE_CHECKING:
    from anthropic.types import Message

__all__ = [
    "consume_stream",
    "content_blocks",
    "conversation",
    "request_options",
    "tool_calls_of",
]

_TOOL_CHOICES = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}


def content_blocks(content: Any) -> Any:
    """An OpenAI message content as Anthropic content: a string stays a string; parts become
    text and image blocks."""
    if content is None or isinstance(content, str):
        return content or ""
    blocks: list[dict[str, Any]] = []
    for part in content:
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            blocks.append(_image_block(str((part.get("image_url") or {}).get("url", ""))))
        else:
            raise InvalidRequestError(f"unsupported content part {part.get('type')!r}")
    return blocks


def _image_block(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[len("data:") :].split(";", 1)[0]
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _text_of(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        raise InvalidRequestError(
            f"tool call {call.get('id')!r}: arguments are not JSON, Anthropic needs an object"
        ) from None
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments}


def conversation(messages: tuple[ChatMessage, ...]) -> tuple[str | None, list[dict[str, Any]]]:
    """``(system, messages)`` for the Messages API from a conversation in OpenAI's shape."""
    system = [_text_of(m.content) for m in messages if m.role == "system"]
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        if m.role == "user":
            out.append({"role": "user", "content": content_blocks(m.content)})
        elif m.role == "assistant":
            if not m.tool_calls:
                out.append({"role": "assistant", "content": content_blocks(m.content)})
                continue
            blocks: list[dict[str, Any]] = []
            text = _text_of(m.content)
            if text:
                blocks.append({"type": "text", "text": text})
            blocks.extend(_tool_use(call) for call in m.tool_calls)
            out.append({"role": "assistant", "content": blocks})
        elif m.role == "tool":
            result = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": _text_of(m.content)}
            previous = out[-1] if out else None
            if previous is not None and previous["role"] == "user" and _all_results(previous["content"]):
                previous["content"].append(result)  # one user turn answers every call
            else:
                out.append({"role": "user", "content": [result]})
        else:
            raise InvalidRequestError(f"unsupported message role {m.role!r}")
    return ("\n\n".join(system) if system else None), out


def _all_results(content: Any) -> bool:
    return isinstance(content, list) and all(b.get("type") == "tool_result" for b in content)


def request_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(SDK keyword arguments, extra_body)`` for a job's options."""
    params: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    tools = options.get("tools")
    if tools:
        params["tools"] = [_tool(t["function"]) for t in tools]
    choice = options.get("tool_choice")
    if isinstance(choice, str):
        params["tool_choice"] = dict(_TOOL_CHOICES[choice])
    elif isinstance(choice, dict):
        params["tool_choice"] = {"type": "tool", "name": choice["function"]["name"]}
    if options.get("stop"):
        params["stop_sequences"] = list(options["stop"])
    if options.get("top_p") is not None:
        extra["top_p"] = options["top_p"]  # the SDK (2.x) has no parameter for it
    response_format = options.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = response_format["json_schema"]["schema"]
        params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    return params, extra


def _tool(function: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        tool["description"] = function["description"]
    return tool


def _call(block_id: Any, name: Any, arguments: str) -> dict[str, Any]:
    return {"id": block_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_calls_of(message: Message) -> list[dict[str, Any]] | None:
    """A message's tool_use blocks as OpenAI tool calls (arguments: the input as JSON text)."""
    calls = [
        _call(block.id, block.name, json.dumps(block.input, separators=(",", ":"), ensure_ascii=False))
        for block in message.content
        if block.type == "tool_use"
    ]
    return calls or None


async def consume_stream(
    chunks: AsyncIterator[bytes],
    on_progress: ProgressCallback,
    meter: StreamMeter,
    name: str,
    normalise: Callable[[str | None], str],
    stream_error: Callable[[dict[str, Any]], ProviderError],
    prompt_tokens_of: Callable[[Any], int],
) -> ProviderResponse:
    """A streamed answer to a request with options: text deltas reported as they come, tool_use
    blocks assembled from their ``input_json_delta`` pieces."""
    text = ""
    pieces = 0
    model: str | None = None
    prompt_tokens = 0
    completion_tokens: int | None = None
    stop_reason: str | None = None
    stopped = False
    tools: dict[int, dict[str, Any]] = {}  # content block index → {"id", "name", "json"}
    async for data in sse_data(chunks):
        event = json.loads(data)
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                text += delta["text"]
                pieces += 1
                meter.pieces = pieces
                on_progress(text, pieces)
            elif delta.get("type") == "input_json_delta":
                block = tools.get(int(event.get("index", -1)))
                if block is not None:
                    block["json"] += delta.get("partial_json") or ""
                    pieces += 1
                    meter.pieces = pieces
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                tools[int(event.get("index", len(tools)))] = {
                    "id": block.get("id"),
                    "name": block.get("name"),
                    "json": "",
                    "input": block.get("input"),
                }
        elif kind == "message_start":
            message = event.get("message") or {}
            model = message.get("model") or None
            usage = message.get("usage") or {}
            prompt_tokens = meter.prompt_tokens = prompt_tokens_of(usage)
            meter.cached_tokens = int(usage.get("cache_read_input_tokens") or 0)
            meter.cache_write_tokens = int(usage.get("cache_creation_input_tokens") or 0)
            completion_tokens = usage.get("output_tokens")
        elif kind == "message_delta":
            stop_reason = (event.get("delta") or {}).get("stop_reason") or stop_reason
            usage = event.get("usage") or {}
            if usage.get("output_tokens") is not None:
                completion_tokens = meter.completion_tokens = usage["output_tokens"]
            if usage.get("input_tokens") is not None and prompt_tokens_of(usage) > prompt_tokens:
                prompt_tokens = meter.prompt_tokens = prompt_tokens_of(usage)
        elif kind == "message_stop":
            stopped = True
        elif kind == "error":
            raise stream_error(event)
    if not stopped:
        raise ProviderStreamError(f"{name}: the stream ended before message_stop ({pieces} pieces received)")
    calls = [
        _call(t["id"], t["name"], t["json"] or json.dumps(t["input"] or {}, separators=(",", ":")))
        for _, t in sorted(tools.items())
    ]
    return ProviderResponse(
        text=text,
        finish_reason=normalise(stop_reason),
        prompt_tokens=prompt_tokens,
        completion_tokens=max(completion_tokens or 0, 0) or pieces,
        model=model,
        cached_tokens=meter.cached_tokens,
        cache_write_tokens=meter.cache_write_tokens,
        tool_calls=calls or None,
    )
