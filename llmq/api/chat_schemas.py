"""``POST /v1/chat/completions``: OpenAI's request body as a pydantic model, and its translation
into a job (:class:`JobCreate`), so the job's own validation and every rule of ``/v1/jobs`` apply.

Only what llmq can honour is accepted. A field OpenAI knows and llmq does not do (``audio``,
``logit_bias``, ...) is refused by name, any other unknown field as OpenAI refuses it
("Unrecognized request argument supplied"); parameters whose only value llmq can honour is the
neutral one (``frequency_penalty``, ``logprobs``, ``parallel_tool_calls``) are accepted at that
value. The request surface jobs carry in OpenAI's own spelling (``api/request_surface.py``:
content parts, ``tool_calls`` and tool messages, ``tools``, ``tool_choice``, ``response_format``,
``stop``, ``seed``, ``top_p``, ``n``) is passed through to :class:`JobCreate` as it is, which
validates it; the only renaming is the ``developer`` role, OpenAI's newer name for ``system``.

llmq's own options (webhook, fallbacks, priority, ...) ride in an ``llmq`` object, which the SDK
sends with ``extra_body={"llmq": {...}}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from llmq.api.schemas import JobCreate

# Fields of OpenAI's request that llmq does not implement: refused by name, with status 400.
UNSUPPORTED_FIELDS = frozenset(
    {
        "audio",
        "function_call",
        "functions",
        "logit_bias",
        "modalities",
        "prediction",
        "prompt_cache_key",
        "prompt_cache_retention",
        "reasoning_effort",
        "top_logprobs",
        "verbosity",
        "web_search_options",
    }
)
# The job's fields of the same name and meaning, passed through as they are.
PASSED_THROUGH = ("tools", "tool_choice", "response_format", "stop", "seed", "top_p", "n")
# llmq's own options, inside ``"llmq": {...}``.
LLMQ_OPTIONS = frozenset(
    {"webhook_url", "timeout_s", "fallbacks", "cache", "degraded_ok", "priority", "on_budget_exceeded"}
)
ROLES = {"developer": "system"}  # OpenAI's newer name for the system role


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[dict[str, Any]] | None = None
    name: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: StrictStr | None = None
    # What the SDK's own ChatCompletionMessage carries back when a caller appends it to the
    # conversation: taken and left out, as no provider takes them back.
    refusal: StrictStr | None = None
    annotations: list[dict[str, Any]] | None = None
    audio: None = None
    function_call: None = None

    def for_job(self) -> dict[str, Any]:
        """The message as a job takes it (``request_surface.ChatMessage`` validates it there)."""
        message: dict[str, Any] = {"role": ROLES.get(self.role, self.role)}
        for name in ("content", "name", "tool_calls", "tool_call_id"):
            value = getattr(self, name)
            if value is not None:
                message[name] = value
        return message


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None  # llmq adds no obfuscation padding


class ChatCompletionCreate(BaseModel):
    """OpenAI's ``chat.completions.create`` body, as far as llmq honours it."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    messages: Annotated[list[ChatMessageIn], Field(min_length=1, max_length=1000)]
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: StrictFloat | None = None
    # Validated by JobCreate (request_surface.RequestOptions), with the same names.
    top_p: Any = None
    n: Any = None
    stop: Any = None
    seed: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Literal[True] | None = None  # what the providers do by default
    response_format: Any = None
    user: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    metadata: dict[str, Any] | None = None
    store: StrictBool | None = None  # llmq keeps every job anyway
    service_tier: Literal["auto", "default", "flex"] | None = None  # flex: a bulk job
    # Accepted at their neutral value only: llmq does not pass them to the providers.
    frequency_penalty: Literal[0] | None = None
    presence_penalty: Literal[0] | None = None
    logprobs: Literal[False] | None = None
    llmq: dict[str, Any] | None = None

    def job_fields(self, default_provider: str = "openai") -> dict[str, Any]:
        """The body of the job this request becomes (validated by ``JobCreate``)."""
        fields: dict[str, Any] = {
            "model": self.model
            if "/" in self.model or self.model == "auto"
            else f"{default_provider}/{self.model}",
            "messages": [m.for_job() for m in self.messages],
        }
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if max_tokens is not None:
            fields["max_tokens"] = max_tokens
        if self.temperature is not None:
            fields["temperature"] = float(self.temperature)
        for name in PASSED_THROUGH:
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        user = self.safety_identifier or self.user
        if user is not None:
            fields["user"] = user
        if self.metadata:
            fields["metadata"] = self.metadata
        if self.service_tier == "flex":
            fields["priority"] = "bulk"
        fields.update(self.llmq or {})
        return fields

    def to_job(self) -> JobCreate:
        return JobCreate.model_validate(self.job_fields())


def unsupported_llmq_options(options: dict[str, Any] | None) -> list[str]:
    return sorted(set(options or {}) - LLMQ_OPTIONS)
