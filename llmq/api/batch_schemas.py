"""Request bodies and queries of ``/v1/files`` and ``/v1/batches``, as OpenAI's Batch API has them."""

from __future__ import annotations

from typing import Annotated, Literal

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
