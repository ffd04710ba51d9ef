"""The simulator's answers to the full request surface: tools, JSON output, stop, seed, n, images.

Parsed from either wire format into one :class:`Surface` (``openai_surface`` /
``anthropic_surface``), then answered deterministically, so tests can assert what comes back:

- **tools**: when tools are given and the choice is not ``none``, the answer is a call of the
  named tool (``tool_choice`` function / Anthropic ``tool``), else of the first tool — except
  under ``auto`` when the conversation's last turn is a tool result: then the model "has its
  answer" and replies in text. Arguments are JSON generated to fit the tool's schema
  (:func:`sample`), one call per answer;
- **JSON output** (OpenAI ``response_format`` json_object / json_schema, Anthropic
  ``output_config.format``): the text is JSON valid against the schema (``{"answer": ...}`` for
  json_object). The script fault ``invalid_json`` makes one answer broken JSON instead;
- **stop** / ``stop_sequences``: the reply is cut before the first stop sequence it contains,
  finish ``stop`` (Anthropic ``stop_sequence``, naming it);
- **seed**: the filler words are chosen by the seed too (same seed, same text);
- **n** (OpenAI only; Anthropic refuses it, as the real API does): n choices, each its own text;
- **images**: image parts/blocks are checked and count ``IMAGE_TOKENS`` prompt tokens each.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

from llmq.simulator.text import InvalidRequest, ParsedRequest, as_deltas, dumps, reply_words

__all__ = [
    "IMAGE_TOKENS",
    "Choice",
    "Surface",
    "anthropic_surface",
    "choices_for",
    "openai_surface",
    "sample",
    "with_surface",
]

_CHOICE_STRIDE = 11  # filler words between the starts of two choices' texts
IMAGE_TOKENS = 85  # OpenAI's "low detail" price of one image; the simulator's for any image
_DATA_URL = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,")
_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


@dataclass(frozen=True)
class Surface:
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → parameters schema
    tool_names: tuple[str, ...] = ()
    choice: str = "auto"  # auto | none | required | named
    named: str | None = None
    json_schema: dict[str, Any] | None = None  # {} for json_object
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    images: int = 0
    after_tool_result: bool = False


@dataclass
class Choice:
    index: int
    text: str
    finish: str  # OpenAI's finish_reason: stop | length | tool_calls
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)  # (id, name, arguments)
    stop_sequence: str | None = None
    tokens: int = 0


# --- parsing -------------------------------------------------------------------------------------


def _openai_images(messages: list[Any]) -> int:
    images = 0
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = (
                    (part.get("image_url") or {}).get("url")
                    if isinstance(part.get("image_url"), dict)
                    else None
                )
                if not isinstance(url, str) or not (
                    url.startswith(("http://", "https://")) or _DATA_URL.match(url)
                ):
                    raise InvalidRequest(
                        "Invalid 'image_url': expected an http(s) URL or a base64 data URL.",
                        param=f"messages[{i}].content[{j}].image_url.url",
                        code="invalid_value",
                    )
                images += 1
    return images


def openai_surface(body: dict[str, Any]) -> Surface | None:
    """The surface of a Chat Completions body; None when it asks for none of it."""
    messages = body.get("messages") or []
    images = _openai_images(messages)
    keys = ("tools", "tool_choice", "response_format", "stop", "seed", "n")
    if not images and all(body.get(k) is None for k in keys):
        return None
    tools, names = _openai_tools(body.get("tools"))
    choice, named = _openai_choice(body.get("tool_choice"), names)
    json_schema = None
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_object":
            json_schema = {}
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise InvalidRequest(
                    "Missing required parameter: 'response_format.json_schema.schema'.",
                    param="response_format.json_schema",
                    code="missing_required_parameter",
                )
            json_schema = spec["schema"]
        elif kind != "text":
            raise InvalidRequest(
                f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', and 'text'.",
                param="response_format.type",
                code="invalid_value",
            )
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    n = body.get("n") or 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        raise InvalidRequest(
            "Invalid 'n': expected an integer from 1 to 128.", param="n", code="invalid_value"
        )
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise InvalidRequest(
            "Invalid type for 'seed': expected an integer.", param="seed", code="invalid_type"
        )
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    return Surface(
        tools=tools,
        tool_names=names,
        choice=choice,
        named=named,
        json_schema=json_schema,
        stop=stops,
        seed=seed,
        n=n,
        images=images,
        after_tool_result=last.get("role") == "tool",
    )


def _openai_tools(raw: Any) -> tuple[dict[str, dict[str, Any]], tuple[str, ...]]:
    if raw is None:
        return {}, ()
    if not isinstance(raw, list):
        raise InvalidRequest(
            "Invalid type for 'tools': expected an array.", param="tools", code="invalid_type"
        )
    tools: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(
                f"Missing required parameter: 'tools[{i}].function.name'.",
                param=f"tools[{i}].function.name",
                code="missing_required_parameter",
            )
        tools[function["name"]] = function.get("parameters") or {"type": "object", "properties": {}}
    return tools, tuple(tools)


def _openai_choice(raw: Any, names: tuple[str, ...]) -> tuple[str, str | None]:
    if raw is None:
        return ("auto" if names else "none"), None
    if raw in ("auto", "none", "required"):
        return str(raw), None
    if isinstance(raw, dict) and isinstance((raw.get("function") or {}).get("name"), str):
        name = raw["function"]["name"]
        if name not in names:
            raise InvalidRequest(
                f"Invalid value for 'tool_choice': function '{name}' is not in tools.",
                param="tool_choice",
                code="invalid_value",
            )
        return "named", name
    raise InvalidRequest("Invalid value for 'tool_choice'.", param="tool_choice", code="invalid_value")


def anthropic_surface(body: dict[str, Any]) -> Surface | None:
    """The surface of a Messages body; None when it asks for none of it. ``seed`` and ``n`` are
    not Messages parameters: refused, as the real API refuses unknown fields."""
    for name in ("seed", "n", "response_format"):
        if name in body:
            raise InvalidRequest(f"{name}: Extra inputs are not permitted")
    messages = body.get("messages") or []
    images = _anthropic_images(messages)
    keys = ("tools", "tool_choice", "stop_sequences", "output_config")
    if not images and all(body.get(k) is None for k in keys):
        return None
    tools: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"tools.{i}.name: Field required")
        if not isinstance(tool.get("input_schema"), dict):
            raise InvalidRequest(f"tools.{i}.input_schema: Field required")
        tools[tool["name"]] = tool["input_schema"]
    names = tuple(tools)
    raw_choice = body.get("tool_choice") or {"type": "auto"}
    kind = raw_choice.get("type") if isinstance(raw_choice, dict) else None
    choices = {"auto": "auto", "none": "none", "any": "required", "tool": "named"}
    if kind not in choices:
        raise InvalidRequest("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    named = raw_choice.get("name") if kind == "tool" else None
    if kind == "tool" and named not in names:
        raise InvalidRequest(f"tool_choice.name: tool {named!r} is not in tools")
    json_schema = None
    output = body.get("output_config")
    if isinstance(output, dict) and output.get("format") is not None:
        fmt = output["format"]
        if (
            not isinstance(fmt, dict)
            or fmt.get("type") != "json_schema"
            or not isinstance(fmt.get("schema"), dict)
        ):
            raise InvalidRequest("output_config.format: expected {type: json_schema, schema: {...}}")
        json_schema = fmt["schema"]
    stops = body.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise InvalidRequest("stop_sequences: Input should be a valid list of non-empty strings")
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    content = last.get("content")
    after_result = isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )
    return Surface(
        tools=tools,
        tool_names=names,
        choice=choices[str(kind)] if names else "none",
        named=named,
        json_schema=json_schema,
        stop=tuple(stops),
        images=images,
        after_tool_result=after_result,
    )


def _anthropic_images(messages: list[Any]) -> int:
    images = 0
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "image":
                continue
            source = block.get("source")
            where = f"messages.{i}.content.{j}.image.source"
            if not isinstance(source, dict):
                raise InvalidRequest(f"{where}: Field required")
            if source.get("type") == "base64":
                if source.get("media_type") not in _MEDIA_TYPES or not isinstance(source.get("data"), str):
                    raise InvalidRequest(f"{where}: media_type must be one of {', '.join(_MEDIA_TYPES)}")
            elif source.get("type") == "url":
                if not str(source.get("url", "")).startswith(("http://", "https://")):
                    raise InvalidRequest(f"{where}.url: Input should be a valid URL")
            else:
                raise InvalidRequest(f"{where}.type: Input should be 'base64' or 'url'")
            images += 1
    return images


# --- answers -------------------------------------------------------------------------------------


def sample(schema: Any, words: list[str], root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A value valid against ``schema`` (the common keywords), built from ``words``:
    deterministic for the same schema and words."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 12:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return sample(target, words, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return sample(schema[key][0], words, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: sample(sub, words, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        return [sample(schema.get("items") or {}, words, root, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        value: float = 0
        if "minimum" in schema:
            value = schema["minimum"]
        elif "exclusiveMinimum" in schema:
            value = schema["exclusiveMinimum"] + 1
        if "maximum" in schema and value > schema["maximum"]:
            value = schema["maximum"]
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, words)


_FORMATS = {"date-time": "2026-01-01T00:00:00Z", "date": "2026-01-01", "email": "user@example.com",
            "uri": "https://example.com/", "uuid": "00000000-0000-4000-8000-000000000000"}  # fmt: skip


def _string(schema: dict[str, Any], words: list[str]) -> str:
    if schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]
    value = " ".join(words[:3]) or "value"
    minimum = int(schema.get("minLength", 0))
    if len(value) < minimum:
        value = value + "x" * (minimum - len(value))
    if "maxLength" in schema:
        value = value[: int(schema["maxLength"])]
    return value


def _stopped(text: str, stops: tuple[str, ...]) -> tuple[str, str | None]:
    """``text`` cut before the first of ``stops`` it contains, and that stop sequence."""
    found = [(text.find(s), s) for s in stops if s in text]
    if not found:
        return text, None
    at, stop = min(found)
    return text[:at], stop


def choices_for(
    surface: Surface, prompt_text: str, n_words: int, max_tokens: int | None, *, invalid_json: bool
) -> list[Choice]:
    """The answer's choices: each a tool call, JSON, or text (cut at a stop sequence)."""
    out = []
    for index in range(surface.n):
        salt = "" if surface.seed is None else f"\x00seed={surface.seed}"
        words, cut = reply_words(prompt_text, n_words, max_tokens, salt=salt, shift=index * _CHOICE_STRIDE)
        calling = surface.tool_names and (
            surface.choice in ("required", "named")
            or (surface.choice == "auto" and not surface.after_tool_result)
        )
        if calling:
            name = surface.named or surface.tool_names[0]
            arguments = dumps(sample(surface.tools[name], words))
            call_id = f"call_{index}_{zlib.crc32((prompt_text + name).encode()):010d}"
            tokens = max(len(arguments) // 4, 1)
            out.append(Choice(index, "", "tool_calls", [(call_id, name, arguments)], tokens=tokens))
            continue
        if surface.json_schema is not None:
            if invalid_json:
                text = '{"answer": "' + " ".join(words)  # cut short: not JSON
            elif surface.json_schema:
                text = dumps(sample(surface.json_schema, words))
            else:
                text = dumps({"answer": " ".join(words)})
            out.append(Choice(index, text, "stop", tokens=max(len(text) // 4, 1)))
            continue
        text, stop = _stopped(" ".join(words), surface.stop)
        finish = "stop" if stop is not None or not cut else "length"
        out.append(Choice(index, text, finish, stop_sequence=stop, tokens=len(text.split()) or 1))
    return out


def stream_pieces(text: str) -> list[str]:
    """Stream pieces that join back to ``text`` exactly: one per word (token)."""
    pieces = as_deltas(text.split(" ")) if text else []
    return [p for p in pieces if p] if "".join(p for p in pieces if p) == text else [text]


def with_surface(parsed: ParsedRequest, asked: Surface | None) -> ParsedRequest:
    """``parsed`` with what it asked of the surface, its images counted as prompt tokens."""
    if asked is None:
        return parsed
    tokens = parsed.prompt_tokens + IMAGE_TOKENS * asked.images
    return replace(parsed, surface=asked, prompt_tokens=tokens)
