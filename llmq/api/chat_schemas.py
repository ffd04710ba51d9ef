"""``POST /v1/chat/completions``: OpenAI's request body as a pydantic model, and its translation
into a job (:class:`JobCreate`), so the job's own validation and every rule of ``/v1/jobs`` apply.

Only what llmq can honour is accepted. A field OpenAI knows and llmq does not do (``audio``,
``logit_bias``, ...) is refused by name, any other unknown field as OpenAI refuses it
("Unrecognized request argument supplied"); parameters whose only value llmq can honour is the
neutral one (``n``, ``frequency_penalty``, ``logprobs``) are accepted at that value. The fields
the job carries as they are (``tools``, ``tool_choice``, ``response_format``, ``stop``, ``seed``,
``top_p``, ``n``, message ``tool_calls``) are passed through to :class:`JobCreate`, which
validates them; a job that cannot carry one refuses it there.

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
PASSED_THROUGH = ("tools", "tool_choice", "response_format", "stop", "seed", "top_p", "parallel_tool_calls")
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
    refusal: StrictStr | None = None

    def for_job(self) -> dict[str, Any]:
        """The message as a job takes it: text parts joined into one string (what every provider
        reads the same way), other parts and tool fields passed as they are."""
        message: dict[str, Any] = {"role": ROLES.get(self.role, self.role)}
        content = self.content
        if isinstance(content, list) and all(_is_text_part(p) for p in content):
            content = "".join(str(p["text"]) for p in content)
        if content is not None:
            message["content"] = content
        for name in ("name", "tool_calls", "tool_call_id"):
            value = getattr(self, name)
            if value is not None:
                message[name] = value
        return message


def _is_text_part(part: dict[str, Any]) -> bool:
    return part.get("type") == "text" and isinstance(part.get("text"), str) and set(part) == {"type", "text"}


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
    top_p: StrictFloat | None = None
    n: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None
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
            "model": self.model if "/" in self.model else f"{default_provider}/{self.model}",
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
                fields[name] = float(value) if name == "top_p" else value
        if self.n is not None and self.n != 1:
            fields["n"] = self.n
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
