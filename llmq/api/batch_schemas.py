"""Request bodies and queries of ``/v1/files`` and ``/v1/batches``, as OpenAI's Batch API has them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class ExpiresAfter(BaseModel):
    anchor: Literal["created_at"]
    seconds: Annotated[StrictInt, Field(ge=3600, le=2_592_000)]


class BatchCreate(BaseModel):
    """``POST /v1/batches``. Only the chat completions endpoint and the "24h" window exist here."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: Annotated[StrictStr, Field(min_length=1, max_length=40)]
    endpoint: Literal["/v1/chat/completions"]
    completion_window: Literal["24h"]
    metadata: (
        dict[Annotated[str, Field(min_length=1, max_length=64)], Annotated[StrictStr, Field(max_length=512)]]
        | None
    ) = Field(default=None, max_length=16)
    output_expires_after: ExpiresAfter | None = None  # accepted; llmq keeps output files until deleted


class PageQuery(BaseModel):
    """``?after=<id>&limit=N`` of OpenAI's cursor pages."""

    model_config = ConfigDict(extra="forbid")

    after: Annotated[str, Field(max_length=40)] | None = None
    limit: int = Field(default=20, ge=1, le=100)


class FileListQuery(PageQuery):
    purpose: Annotated[str, Field(max_length=32)] | None = None
    order: Literal["desc"] = "desc"
    limit: int = Field(default=20, ge=1, le=10_000)


# The objects the endpoints answer, as ``file_public`` and ``batch_public`` state them (OpenAI's
# ``file`` and ``batch``); tests/unit/test_batch_lines.py holds them equal.
class FileOut(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["processed"]
    status_details: None
    expires_at: int | None


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchOut(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: dict[str, Any] | None
    input_file_id: str
    completion_window: str
    status: Literal[
        "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
    ]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileOut]
    first_id: str | None
    last_id: str | None
    has_more: bool
