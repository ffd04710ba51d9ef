"""A batch's life on the database side: created, read, listed, cancelled, counted, finished.

::

    validating ──first chunk of lines made into jobs──▶ in_progress ──all lines ended──▶ finalizing
        │                                                   │                              │
        │                                                   ├──completion window passed──▶ expired
        │                                                   └──cancel──▶ cancelling ──▶ cancelled
        └──(no line could run)──▶ failed                                finalizing ──▶ completed

Every move is a compare-and-set on the batch's status. The final one writes the batch's webhook
event (``batch.completed|failed|expired|cancelled``, to the tenant's ``webhook_url``, as
``budget.threshold`` is) in the same transaction, so it is sent once whoever finishes the batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from llmq.models.base import isoformat, new_id
from llmq.models.batch_tables import Batch, BatchLineError
from llmq.models.files import FileNotFound, get_file
from llmq.models.state import JobStatus, WebhookEventStatus
from llmq.models.statements import INSERT_EVENT, JOBS, TENANTS, compare_and_set, final_values

RUNNING = ("validating", "in_progress")
ACTIVE = (*RUNNING, "finalizing", "cancelling")
EVENT_TYPES = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}


class BatchNotFound(LookupError):
    """No such batch for this tenant."""


class BatchAlreadyEnded(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(f"the batch already ended as {status}")
        self.status = status


class InvalidInputFile(ValueError):
    """The input file is not one a batch can read (unknown, or not uploaded for a batch)."""


def create_batch(
    session: Session,
    *,
    tenant_id: str,
    api_key_id: str | None,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    window_s: float,
    metadata: dict[str, str] | None,
    request_id: str | None,
    now: datetime,
) -> Batch:
    try:
        source = get_file(session, tenant_id, input_file_id)
    except FileNotFound:
        raise InvalidInputFile(f"no file {input_file_id!r}") from None
    if source.purpose != "batch":
        raise InvalidInputFile(f"file {input_file_id!r} was not uploaded with purpose 'batch'")
    batch = Batch(
        id=new_id("batch_"),
        tenant_id=tenant_id,
        api_key_id=api_key_id,
        endpoint=endpoint,
        input_file_id=input_file_id,
        completion_window=completion_window,
        status="validating",
        metadata_=metadata,
        request_id=request_id,
        lines_read=0,
        bytes_read=0,
        expanded=False,
        total=0,
        completed=0,
        failed=0,
        refused=0,
        created_at=now,
        expires_at=now + timedelta(seconds=window_s),
        updated_at=now,
    )
    session.add(batch)
    session.flush()
    return batch


def get_batch(session: Session, tenant_id: str, batch_id: str) -> Batch:
    batch = session.get(Batch, batch_id)
    if batch is None or batch.tenant_id != tenant_id:
        raise BatchNotFound(batch_id)
    return batch


def list_batches(
    session: Session, *, tenant_id: str, after: str | None, limit: int
) -> tuple[list[Batch], bool]:
    """A page of the tenant's batches, newest first, after the batch ``after`` (its id)."""
    stmt = select(Batch).where(Batch.tenant_id == tenant_id)
    if after:
        last = get_batch(session, tenant_id, after)
        stmt = stmt.where(
            (Batch.created_at < last.created_at)
            | ((Batch.created_at == last.created_at) & (Batch.id < last.id))
        )
    rows = list(session.scalars(stmt.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def request_cancel(session: Session, *, tenant_id: str, batch_id: str, now: datetime) -> Batch:
    """``validating|in_progress → cancelling``; the tick cancels its queued lines and, once the
    running ones have ended, writes the partial output. A second cancel changes nothing."""
    compare_and_set(
        session,
        update(Batch)
        .where(Batch.id == batch_id, Batch.tenant_id == tenant_id, Batch.status.in_(RUNNING))
        .values(status="cancelling", cancelling_at=now, updated_at=now)
        .execution_options(synchronize_session=False),
    )
    batch = get_batch(session, tenant_id, batch_id)
    session.refresh(batch)
    if batch.status not in ("cancelling", "cancelled"):
        raise BatchAlreadyEnded(batch.status)
    return batch


def _unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def batch_public(batch: Batch) -> dict[str, Any]:
    """OpenAI's ``batch`` object."""
    errors = None
    if batch.errors:
        errors = {"object": "list", "data": batch.errors}
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": _unix(batch.created_at),
        "in_progress_at": _unix(batch.in_progress_at),
        "expires_at": _unix(batch.expires_at),
        "finalizing_at": _unix(batch.finalizing_at),
        "completed_at": _unix(batch.completed_at),
        "failed_at": _unix(batch.failed_at),
        "expired_at": _unix(batch.expired_at),
        "cancelling_at": _unix(batch.cancelling_at),
        "cancelled_at": _unix(batch.cancelled_at),
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "metadata": batch.metadata_,
    }


def active_batches(session: Session, limit: int = 500) -> list[str]:
    """The batches not yet ended (the ``ix_batches_status`` index), oldest first."""
    return list(
        session.scalars(
            select(Batch.id).where(Batch.status.in_(ACTIVE)).order_by(Batch.created_at).limit(limit)
        )
    )


def line_counts(session: Session, batch_id: str) -> dict[str, int]:
    """How many of the batch's line jobs are in each state: read from ``ix_jobs_batch_status``
    alone, never from the rest of the jobs."""
    rows = session.execute(
        select(JOBS.c.status, func.count()).where(JOBS.c.batch_id == batch_id).group_by(JOBS.c.status)
    ).all()
    return {str(row[0]): int(row[1]) for row in rows}


def store_counts(session: Session, batch_id: str, counts: dict[str, int], now: datetime) -> None:
    """The request_counts as the lines now stand (refused lines count as failed)."""
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(
            completed=counts.get(JobStatus.COMPLETED.value, 0),
            failed=Batch.refused + counts.get(JobStatus.FAILED.value, 0),
        )
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class Cancelled:
    job_ids: list[str]
    were_running: list[str]  # of them, the ones a worker was calling: tell it to stop


def cancel_line_jobs(
    session: Session,
    batch_id: str,
    *,
    statuses: tuple[str, ...],
    code: str,
    message: str,
    now: datetime,
    limit: int = 1000,
) -> Cancelled:
    """Cancel up to ``limit`` of the batch's jobs still in ``statuses`` — the compare-and-set of
    ``cancel_job``, for many jobs in one statement (line jobs have no webhook of their own, so
    there is no event to write per job). A worker still calling one loses its lease: its answer
    is discarded when it comes."""
    found = session.execute(
        select(JOBS.c.id, JOBS.c.status)
        .where(JOBS.c.batch_id == batch_id, JOBS.c.status.in_(statuses))
        .limit(limit)
    ).all()
    if not found:
        return Cancelled([], [])
    done = set(
        session.scalars(
            update(JOBS)
            .where(JOBS.c.id.in_([row.id for row in found]), JOBS.c.status.in_(statuses))
            .values(**final_values(JobStatus.CANCELLED, code, message, now))
            .returning(JOBS.c.id)
        )
    )
    running = [row.id for row in found if row.id in done and row.status == JobStatus.PROCESSING.value]
    return Cancelled(sorted(done), running)


def first_line_errors(session: Session, batch_id: str, limit: int = 100) -> list[dict[str, object]]:
    """The batch's first refused lines, as the ``errors`` of a batch that failed (OpenAI's
    ``BatchError``: code, message, param, line)."""
    rows = session.scalars(
        select(BatchLineError)
        .where(BatchLineError.batch_id == batch_id)
        .order_by(BatchLineError.line)
        .limit(limit)
    )
    return [
        {"code": row.code, "message": row.message, "param": None, "line": row.line, "object": "error"}
        for row in rows
    ]


def lock_batch(session: Session, batch_id: str) -> Batch | None:
    """The batch, locked until the transaction ends: waits for a chunk of its expansion to end."""
    return session.scalars(select(Batch).where(Batch.id == batch_id).with_for_update()).first()


def mark_finalizing(session: Session, batch_id: str, now: datetime) -> bool:
    return compare_and_set(
        session,
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == "in_progress")
        .values(status="finalizing", finalizing_at=now, updated_at=now)
        .execution_options(synchronize_session=False),
    )


@dataclass(frozen=True)
class Outcome:
    """How a batch ends: its final state, files and counts."""

    status: str  # completed | failed | expired | cancelled
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    errors: list[dict[str, Any]] | None = None


def finish_batch(
    session: Session, batch_id: str, outcome: Outcome, *, from_statuses: tuple[str, ...], now: datetime
) -> str | None:
    """Move the batch to its final state and write its webhook event. Returns the event's id to
    enqueue (None: the tenant has no webhook URL). Raises :class:`BatchAlreadyEnded` when another
    finisher won (the caller discards the files it wrote)."""
    applied = compare_and_set(
        session,
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_(from_statuses))
        .values(
            status=outcome.status,
            output_file_id=outcome.output_file_id,
            error_file_id=outcome.error_file_id,
            total=outcome.total,
            completed=outcome.completed,
            failed=outcome.failed,
            errors=outcome.errors,
            updated_at=now,
            **{f"{outcome.status}_at": now},
        )
        .execution_options(synchronize_session=False),
    )
    if not applied:
        raise BatchAlreadyEnded("finished by another")
    batch = session.get(Batch, batch_id)
    assert batch is not None
    session.refresh(batch)
    url = session.scalar(select(TENANTS.c.webhook_url).where(TENANTS.c.id == batch.tenant_id))
    if not url:
        return None
    event_type = EVENT_TYPES[outcome.status]
    event_id = new_id("msg_")
    session.execute(
        INSERT_EVENT,
        {
            "id": event_id,
            "job_id": None,
            "tenant_id": batch.tenant_id,
            "type": event_type,
            "url": url,
            "payload": json.dumps(
                {"type": event_type, "timestamp": isoformat(now), "data": batch_public(batch)},
                separators=(",", ":"),
            ),
            "status": WebhookEventStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        },
    )
    return event_id
