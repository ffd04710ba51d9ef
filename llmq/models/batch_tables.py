"""The tables of OpenAI's Batch API: uploaded files, batches, and the lines a batch refused.

A batch's lines are ordinary jobs (``jobs.batch_id``); what is kept here is what a job cannot
say: the file the lines came from, how far its expansion has read, the batch's own states and
times, and the lines that never became a job (invalid JSON, an unknown model), which the batch's
error file lists beside the jobs that failed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from llmq.models.base import Base, JSONType, utcnow


class StoredFile(Base):
    """A file under ``LLMQ_FILES_DIR``: the bytes live on disk (``storage_name``), never here."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    purpose: Mapped[str] = mapped_column(String(32))  # batch (uploaded) | batch_output (written)
    filename: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(Integer)
    storage_name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Batch(Base):
    """One ``/v1/batches`` batch. The counts are refreshed by ``llmq.batch_tick`` from the jobs'
    ``(batch_id, status)`` index, so reading a batch never counts its jobs."""

    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_batches_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    api_key_id: Mapped[str | None] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSONType)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # --- expansion: where in the input file the next chunk of lines starts ---------------------
    lines_read: Mapped[int] = mapped_column(Integer, default=0)
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)
    expanded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # --- request_counts: total lines; of them, completed and failed (refused lines included) ---
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    refused: Mapped[int] = mapped_column(Integer, default=0)  # lines that never became a job
    # --- the times of its states ------------------------------------------------------------
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    in_progress_at: Mapped[datetime | None]
    expires_at: Mapped[datetime]
    finalizing_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    cancelling_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class BatchLineError(Base):
    """A line of a batch's input that never became a job: written with the chunk it was read in,
    so a retried chunk writes it once."""

    __tablename__ = "batch_line_errors"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    line: Mapped[int] = mapped_column(Integer)  # 1-based
    custom_id: Mapped[str | None] = mapped_column(Text)
    code: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
