"""Request and response bodies of the HTTP API, as pydantic models. They validate input and
generate ``/openapi.json``; nothing else describes the API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
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

from llmq.config.model_ids import MODEL_PATTERN
from llmq.models.request_surface import MAX_PROMPT_CHARS, ChatMessage, RequestOptions, ToolCall, message_dict

JobStatusName = Literal["queued", "processing", "completed", "failed", "cancelled"]


class JobCreate(RequestOptions):
    """``POST /v1/jobs``. Exactly one of ``messages`` and ``prompt``; the generation options
    (tools, response_format, stop, seed, top_p, n) come from ``RequestOptions``."""

    model_config = ConfigDict(extra="forbid")

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1000)] | None = None
    prompt: Annotated[StrictStr, Field(min_length=1, max_length=MAX_PROMPT_CHARS)] | None = None
    model: Annotated[StrictStr, Field(max_length=200, pattern=MODEL_PATTERN + "|^auto$")] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1, le=32_768)] | None = None
    temperature: Annotated[StrictFloat, Field(ge=0, le=2)] | None = None
    webhook_url: AnyHttpUrl | None = None
    metadata: dict[
        Annotated[str, Field(min_length=1, max_length=64)], Annotated[StrictStr, Field(max_length=512)]
    ] = Field(default_factory=dict, max_length=16)
    user: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")] | None = None
    timeout_s: Annotated[StrictFloat, Field(gt=0, le=86_400)] | None = None
    fallbacks: (
        Annotated[
            list[Annotated[StrictStr, Field(max_length=200, pattern=MODEL_PATTERN)]], Field(max_length=5)
        ]
        | None
    ) = None
    cache: StrictBool | None = None
    degraded_ok: StrictBool = False
    # interactive work overtakes the same tenant's bulk work in a model's wait line
    priority: Literal["interactive", "bulk"] = "interactive"
    # a call that does not fit the budget: fail the job, or wait for the budget's next period
    on_budget_exceeded: Literal["fail", "wait"] = "fail"

    @model_validator(mode="after")
    def _one_of_prompt_or_messages(self) -> JobCreate:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        return self

    @field_validator("webhook_url")
    @classmethod
    def _short_url(cls, value: AnyHttpUrl | None) -> AnyHttpUrl | None:
        if value is not None and len(str(value)) > 2048:
            raise ValueError("webhook_url is longer than 2048 characters")
        return value

    def message_dicts(self) -> list[dict[str, Any]]:
        if self.prompt is not None:
            return [{"role": "user", "content": self.prompt}]
        assert self.messages is not None
        return [message_dict(m) for m in self.messages]


class JobListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: JobStatusName | None = None
    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


class Choice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    tool_calls: list[ToolCall] | None = None


class Result(BaseModel):
    text: str  # with response_format json_*: the JSON, already validated against the schema
    finish_reason: str | None  # "tool_calls" when the model called tools
    tool_calls: list[ToolCall] | None = None  # the first choice's, in OpenAI's shape
    choices: list[Choice] | None = None  # every choice, when the job asked for n > 1


class Usage(BaseModel):
    prompt_tokens: int  # every input token, the cached and cache-written ones included
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it (Anthropic)


class JobError(BaseModel):
    type: str
    message: str


# The job object as ``job_public`` states it; tests/unit/test_job_shape.py keeps the two in step.
# (A comment, not a docstring: a docstring would become the schema's description in /openapi.json.)
class JobOut(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: JobStatusName
    model: str
    served_by: str | None
    created_at: str
    started_at: str | None
    completed_at: str | None
    attempts: int
    progress: float
    result: Result | None
    usage: Usage | None
    cost_usd: float | None  # the sum over the job's attempts the provider billed
    error: JobError | None
    metadata: dict[str, str]
    webhook_url: str | None
    next_attempt_at: str | None
    wait_reason: str | None
    route_reason: str | None
    partial_text: str | None
    cached: bool
    degraded: bool
    fallbacks: list[str] | None
    priority: Literal["interactive", "bulk"]
    via_batch: bool = False  # answered through the provider's batch API, at its batch price
    batch_saved_usd: float | None = None  # the standard price of that answer less what it cost


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]
    has_more: bool
    next_cursor: str | None


class ErrorBody(BaseModel):
    type: str
    message: str
    details: list[dict[str, object]] | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, StrictStr]
