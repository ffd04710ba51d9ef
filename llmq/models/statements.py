"""The Core tables and the statement pieces that several transitions share.

Kept apart so that every module of transitions (submit, claim, finish, recovery, outbox) builds on
the same prebuilt statements and guards, and none has to import another just for a table. It
imports nothing from the transition modules: it is the bottom of ``llmq.models``' own layers.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, Table, bindparam, insert, update
from sqlalchemy.orm import Session

from llmq.models.state import JobStatus
from llmq.models.tables import Attempt, Job, Tenant, WebhookDelivery, WebhookEvent

# Core tables for the hot path (claim, attempt, completion, events): no unit of work, no identity
# map, no objects built only to be serialised.
JOBS = cast(Table, Job.__table__)
ATTEMPTS = cast(Table, Attempt.__table__)
EVENTS = cast(Table, WebhookEvent.__table__)
DELIVERIES = cast(Table, WebhookDelivery.__table__)
TENANTS = cast(Table, Tenant.__table__)
# Every column of a job under its attribute name, so a returned row reads like a Job for job_public.
JOB_COLUMNS = [attr.columns[0].label(attr.key) for attr in Job.__mapper__.column_attrs]
UNSET_JOB = {attr.key: None for attr in Job.__mapper__.column_attrs}
# A job's attribute names and column names differ in two places only: end_user is the column
# "user", metadata_ the column "metadata" (Declarative reserves ``metadata``). The records the
# transitions pass around (NewJob, ClaimedJob) and the API say ``user`` and ``metadata``, as the
# columns do: so a record field maps to the column of its own name, and through ATTRIBUTE_OF to
# the attribute, without restating the two renames anywhere else.
COLUMN_OF = {attr.key: attr.columns[0].name for attr in Job.__mapper__.column_attrs}
ATTRIBUTE_OF = {column: key for key, column in COLUMN_OF.items()}
# The values a new job starts with, as the table states them (``default=`` of its columns): the
# counters at zero, the flags off, queued. create_job writes them explicitly (one INSERT that
# names every column, and a record of the new job for job_public without reading it back).
NEW_JOB_DEFAULTS: dict[str, Any] = {
    attr.key: attr.columns[0].default.arg
    for attr in Job.__mapper__.column_attrs
    if attr.columns[0].default is not None and attr.columns[0].default.is_scalar
}
# What job_public and the webhook event need: not the prompt, not the idempotency fields.
_NOT_PUBLIC = {"messages", "request_fingerprint", "idempotency_key", "partial_text", "lease_token"}
PUBLIC_JOB_COLUMNS = [column for column in JOB_COLUMNS if column.key not in _NOT_PUBLIC]

# Hot-path statements are built once and run with parameters: building a statement and its cache
# key costs more CPU than running it.
INSERT_JOB = insert(JOBS)
INSERT_ATTEMPT = insert(ATTEMPTS)
INSERT_EVENT = insert(EVENTS)


@functools.cache
def update_held_job(keys: tuple[str, ...], returning: bool) -> Any:
    """``UPDATE jobs SET <keys> WHERE id, status processing and lease token match``, with the
    new values as parameters ``v_<key>`` (and ``w_id``, ``w_token``)."""
    statement = (
        update(JOBS)
        .where(
            JOBS.c.id == bindparam("w_id"),
            JOBS.c.status == JobStatus.PROCESSING.value,
            JOBS.c.lease_token == bindparam("w_token"),
        )
        .values({key: bindparam(f"v_{key}", type_=JOBS.c[key].type) for key in keys})
    )
    return statement.returning(*PUBLIC_JOB_COLUMNS) if returning else statement


@functools.cache
def update_attempt(keys: tuple[str, ...]) -> Any:
    """``UPDATE attempts SET <keys>`` of one attempt (``w_job_id``, ``w_number``), with the new
    values as parameters ``v_<key>``."""
    return (
        update(ATTEMPTS)
        .where(ATTEMPTS.c.job_id == bindparam("w_job_id"), ATTEMPTS.c.number == bindparam("w_number"))
        .values({key: bindparam(f"v_{key}", type_=ATTEMPTS.c[key].type) for key in keys})
    )


def holds_lease(job_id: str, lease_token: str) -> Any:
    """The guard of every write by the worker holding a job: still processing, same lease."""
    return (
        (JOBS.c.id == job_id)
        & (JOBS.c.status == JobStatus.PROCESSING.value)
        & (JOBS.c.lease_token == lease_token)
    )


def final_values(status: JobStatus, error_type: str, message: str, now: datetime) -> dict[str, Any]:
    """The columns every move to a final state without a result sets: the error, no lease, no
    pending wait."""
    return {
        "status": status.value,
        "error_type": error_type,
        "error_message": message,
        "lease_token": None,
        "lease_expires_at": None,
        "next_attempt_at": None,
        "wait_reason": None,
        "completed_at": now,
        "updated_at": now,
    }


def compare_and_set(session: Session, statement: Executable) -> bool:
    """Run a guarded UPDATE; True when it changed the one row it targets."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount == 1
