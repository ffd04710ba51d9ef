"""The request surface shared by ``POST /v1/jobs`` and ``POST /v1/chat/completions``: messages
with content parts (text, images), tool calls and tool results, and the generation options
(``tools``, ``tool_choice``, ``response_format``, ``stop``, ``seed``, ``top_p``, ``n``).

All of it is spelled as OpenAI's Chat Completions API spells it, so a request body written for
the ``openai`` SDK validates here unchanged; the Anthropic provider maps it (see
``workers/providers/anthropic_surface.py``). What a provider cannot do is refused at submit
(``workers/capabilities.py``), not here: these models know nothing of providers.

::

    ChatMessage = SystemMessage | UserMessage | AssistantMessage | ToolMessage   (by ``role``)
    UserMessage.content = str | [TextPart | ImagePart, ...]
    AssistantMessage.tool_calls = [ToolCall{id, type: function, function{name, arguments}}]
    ToolMessage = {role: tool, tool_call_id, content}
    RequestOptions = {tools, tool_choice, response_format, stop, seed, top_p, n}
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

__all__ = [
    "MAX_PROMPT_CHARS",
    "AssistantMessage",
    "ChatMessage",
    "ContentPart",
    "FunctionCall",
    "FunctionDefinition",
    "ImagePart",
    "ImageUrl",
    "JsonSchemaFormat",
    "NamedToolChoice",
    "RequestOptions",
    "ResponseFormat",
    "ResponseFormatJsonObject",
    "ResponseFormatJsonSchema",
    "ResponseFormatText",
    "SystemMessage",
    "TextPart",
    "Tool",
    "ToolCall",
    "ToolChoice",
    "ToolMessage",
    "UserMessage",
    "check_json_schema",
]

MAX_PROMPT_CHARS = 100_000
MAX_IMAGE_URL_CHARS = 20 * 1024 * 1024  # a base64 data URL of a ~15 MB image
TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
_DATA_URL = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]+$")
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")

Text = Annotated[StrictStr, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]


def check_json_schema(schema: dict[str, Any], where: str) -> None:
    """Raise ``ValueError`` (a 422 through pydantic) unless ``schema`` is a valid JSON Schema."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"{where} is not a valid JSON Schema: {exc.message}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- content parts -------------------------------------------------------------------------------


class TextPart(_Strict):
    type: Literal["text"]
    text: Annotated[StrictStr, Field(max_length=MAX_PROMPT_CHARS)]


class ImageUrl(_Strict):
    url: Annotated[StrictStr, Field(min_length=1, max_length=MAX_IMAGE_URL_CHARS)]
    detail: Literal["auto", "low", "high"] | None = None

    @field_validator("url")
    @classmethod
    def _http_or_base64(cls, value: str) -> str:
        if value.startswith(("http://", "https://")):
            if len(value) > 2048 or any(c.isspace() for c in value):
                raise ValueError("an image URL must be at most 2048 characters, without spaces")
            return value
        if value.startswith("data:"):
            if not _DATA_URL.match(value):
                raise ValueError("a data URL must be data:image/(png|jpeg|gif|webp);base64,<base64 bytes>")
            return value
        raise ValueError("image_url.url must be an http(s) URL or a data:image/...;base64 URL")


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
TextOnlyContent = Text | Annotated[list[TextPart], Field(min_length=1, max_length=100)]


# --- messages ------------------------------------------------------------------------------------


class FunctionCall(_Strict):
    name: Annotated[StrictStr, Field(pattern=TOOL_NAME_PATTERN)]
    arguments: Annotated[StrictStr, Field(max_length=MAX_PROMPT_CHARS)]  # JSON, as the model wrote it


class ToolCall(_Strict):
    id: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Strict):
    role: Literal["system"]
    content: TextOnlyContent
    name: Annotated[StrictStr, Field(max_length=64)] | None = None


class UserMessage(_Strict):
    role: Literal["user"]
    content: Text | Annotated[list[ContentPart], Field(min_length=1, max_length=100)]
    name: Annotated[StrictStr, Field(max_length=64)] | None = None


class AssistantMessage(_Strict):
    """A model's earlier turn: text, tool calls, or both (then ``content`` may be null)."""

    role: Literal["assistant"]
    content: TextOnlyContent | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1, max_length=128)] | None = None
    name: Annotated[StrictStr, Field(max_length=64)] | None = None

    @model_validator(mode="after")
    def _content_or_calls(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(_Strict):
    """The result of a tool call, answering the assistant's call ``tool_call_id``."""

    role: Literal["tool"]
    tool_call_id: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    content: TextOnlyContent


ChatMessage = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


# --- tools ---------------------------------------------------------------------------------------


class FunctionDefinition(_Strict):
    name: Annotated[StrictStr, Field(pattern=TOOL_NAME_PATTERN)]
    description: Annotated[StrictStr, Field(max_length=4096)] | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema (an object schema)
    strict: StrictBool | None = None

    @field_validator("parameters")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            check_json_schema(value, "function.parameters")
        return value


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: Annotated[StrictStr, Field(pattern=TOOL_NAME_PATTERN)]


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


# --- response_format -----------------------------------------------------------------------------


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJsonObject(_Strict):
    type: Literal["json_object"]


class JsonSchemaFormat(_Strict):
    name: Annotated[StrictStr, Field(pattern=TOOL_NAME_PATTERN)]
    description: Annotated[StrictStr, Field(max_length=4096)] | None = None
    # "schema" shadows a BaseModel attribute: held as schema_, spelled "schema" on the wire.
    schema_: dict[str, Any] = Field(alias="schema")
    strict: StrictBool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_schema(value, "json_schema.schema")
        return value


class ResponseFormatJsonSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema, Field(discriminator="type")
]

Stop = (
    Annotated[StrictStr, Field(min_length=1, max_length=256)]
    | Annotated[
        list[Annotated[StrictStr, Field(min_length=1, max_length=256)]], Field(min_length=1, max_length=4)
    ]
)


class RequestOptions(_Strict):
    """The generation options beyond ``max_tokens`` / ``temperature``, as fields of a request
    body (``JobCreate`` and the chat completions request inherit them)."""

    tools: Annotated[list[Tool], Field(min_length=1, max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    stop: Stop | None = None
    seed: StrictInt | None = None
    top_p: Annotated[StrictFloat | StrictInt, Field(ge=0, le=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=8)] | None = None

    @model_validator(mode="after")
    def _consistent_tools(self) -> RequestOptions:
        names = [t.function.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("tools: every function needs its own name")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools")
        if self.tool_choice is not None and not names:
            raise ValueError("tool_choice is only allowed when tools are given")
        return self

    def options_dict(self) -> dict[str, Any] | None:
        """The options given, as stored with the job (OpenAI's spelling, nulls and defaults
        dropped, ``stop`` always a list); None when none was given, so a plain job carries
        nothing extra and costs nothing extra."""
        options = self.model_dump(
            mode="json", include=set(RequestOptions.model_fields), exclude_none=True, by_alias=True
        )
        if options.get("n") == 1:
            del options["n"]
        if options.get("response_format", {}).get("type") == "text":
            del options["response_format"]  # the default
        if isinstance(options.get("stop"), str):
            options["stop"] = [options["stop"]]
        return options or None


def message_dict(message: BaseModel) -> dict[str, Any]:
    """A message as stored with the job: OpenAI's JSON shape, nulls dropped (a text message
    stays ``{"role", "content"}``, as before content parts existed)."""
    return message.model_dump(mode="json", exclude_none=True)
