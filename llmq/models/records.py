"""The plain data the transitions take and give: new jobs, claims, call outcomes, results, errors.

Kept apart from the statements so that the tasks and the API can name these types (a worker
passes a ``ClaimedJob`` between threads, the API catches ``JobNotFound``) without importing any
transition, and so that every transition module shares one definition of each.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmq.models.outbox import EventToSend
from llmq.models.state import JobStatus
from llmq.models.statements import JOBS, TENANTS
from llmq.models.tables import Job

EVENT_TYPES = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


class JobNotFound(LookupError):
    """No such job for this tenant (another tenant's job is not found either)."""


class JobAlreadyEnded(Exception):
    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} already ended as {job.status}")
        self.job_id = job.id
        self.status = job.status


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, job: Job) -> None:
        super().__init__("Idempotency-Key reused with a different request")
        self.job = job


@dataclass(frozen=True)
class NewJob:
    """A job as submitted. A field named as a jobs column is stored in that column as it is
    (``NEW_JOB_COLUMNS``); the others (``timeout_s``) are turned into columns by ``create_job``."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    user: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    fallbacks: list[str] | None = None
    use_cache: bool | None = None
    degraded_ok: bool = False
    priority: str = "interactive"  # interactive | bulk
    budget_wait: bool = False  # over budget: wait for the next period rather than fail
    # tools, tool_choice, response_format, stop, seed, top_p, n (OpenAI's spelling), or None
    request_options: dict[str, Any] | None = None
    batch_id: str | None = None  # the line of this batch (``/v1/batches``)

    def fingerprint(self) -> str:
        """The SHA-256 of the request, every field of it: an Idempotency-Key replay must match.
        The fields added after the first fingerprints were stored (``_HASHED_UNLESS_DEFAULT``)
        count only when not at their default, so the stored fingerprints stay valid."""
        canonical = json.dumps(
            {
                name: getattr(self, name)
                for name in _NEW_JOB_FIELDS
                if _HASHED_UNLESS_DEFAULT.get(name, _ALWAYS) != getattr(self, name)
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


_NEW_JOB_FIELDS = tuple(f.name for f in fields(NewJob))
_ALWAYS = object()
_HASHED_UNLESS_DEFAULT: dict[str, object] = {
    "priority": "interactive",
    "budget_wait": False,
    "request_options": None,
    "batch_id": None,
}
# The fields of NewJob stored as they are, in the column of the same name.
NEW_JOB_COLUMNS = tuple(name for name in _NEW_JOB_FIELDS if name in JOBS.c)


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to make one provider call; plain data, safe to pass between threads.

    Most fields are the job's columns as the claim left them: the claim's RETURNING list and the
    construction from its row are derived from these fields (``CLAIMED_COLUMNS``), so a job
    column a worker needs is added here, once."""

    job_id: str
    tenant_id: str
    lease_token: str
    attempt_number: int
    max_attempts: int
    model: str  # the model this attempt calls: the job's current model, else the requested one
    messages: list[dict[str, Any]]
    max_tokens: int | None
    temperature: float | None
    user: str | None
    deadline_at: datetime | None
    requested_model: str = ""
    current_model: str | None = None
    model_attempts: int = 1
    fallbacks: list[str] | None = None
    use_cache: bool | None = None
    degraded_ok: bool = False
    priority: str = "interactive"
    api_key_id: str | None = None
    budget_wait: bool = False
    worker: str | None = None
    # The rest of the job as the claim left it, so a completion can state the job's public view
    # (its webhook payload) without reading the row again.
    route_reason: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, str] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    # What the job's earlier attempts cost (its cost_usd when claimed): a job costs the sum of
    # its billed attempts, and nothing else writes the job while this worker holds its lease.
    spent_usd: Decimal | None = None
    # Correlation: the submit's request_id (every log line of the job) and traceparent (its spans).
    request_id: str | None = None
    traceparent: str | None = None
    # The provider batch that took the job before, if one did: it never goes in another.
    provider_batch_id: str | None = None
    attempt_opened: bool = False  # the claim also wrote the attempt row (Postgres)
    request_options: dict[str, Any] | None = None  # see NewJob; None for a plain job
    batch_id: str | None = None  # the /v1/batches batch the job is a line of


# The fields of a ClaimedJob the claim itself gives, not the claimed row.
_GIVEN_BY_CLAIM = {"job_id", "lease_token", "model", "worker", "attempt_opened"}
# The fields named otherwise than their column (a field named as a column is that column).
_CLAIMED_RENAMES = {"attempt_number": "attempts", "requested_model": "model", "spent_usd": "cost_usd"}
# Every other field of ClaimedJob → the jobs column it is read from. The claim returns these
# columns labelled with the field names, so its row builds a ClaimedJob as it is; and the
# completion maps them back (through ATTRIBUTE_OF) to state the job without reading it.
CLAIMED_COLUMNS = {
    f.name: _CLAIMED_RENAMES.get(f.name, f.name) for f in fields(ClaimedJob) if f.name not in _GIVEN_BY_CLAIM
}
assert all(column in JOBS.c for column in CLAIMED_COLUMNS.values()), CLAIMED_COLUMNS


@dataclass(frozen=True)
class SendNow:
    """The caller sends the first attempt of a job's webhook itself, right after the commit: the
    event is claimed for ``hold_s`` (past that, the sweeper hands it to the webhooks queue)."""

    hold_s: float
    # A tenant's webhook secret never changes once created, so a process keeps the ones it read.
    secrets: dict[str, str] = field(default_factory=dict)

    def secret(self, session: Session, tenant_id: str) -> str:
        secret = self.secrets.get(tenant_id)
        if secret is None:
            secret = session.scalar(select(TENANTS.c.webhook_secret).where(TENANTS.c.id == tenant_id))
            assert secret is not None
            self.secrets[tenant_id] = secret
        return secret


@dataclass
class TransitionResult:
    """The outcome of a transition: the job as it now is, and webhook events to enqueue."""

    job: Any  # the job after the move (a Job, or a row with its attributes), when read
    applied: bool
    event_ids: list[str] = field(default_factory=list)  # for the webhooks queue
    events: list[EventToSend] = field(default_factory=list)  # claimed for the caller to send now


@dataclass(frozen=True)
class CallResult:
    text: str
    finish_reason: str
    prompt_tokens: int  # every input token, cached and cache-written ones included
    completion_tokens: int
    served_by: str | None
    cost_usd: Decimal | None  # this call's, as priced from the provider's usage
    latency_ms: int
    cached: bool = False  # answered from llmq's response cache (no provider call)
    degraded: bool = False
    http_status: int | None = 200
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it
    # Besides text: {"tool_calls": [...]} and/or {"choices": [...]}; None for a text answer.
    extra: dict[str, Any] | None = None
    via_batch: bool = False  # answered through the provider's batch API, at its batch price
    batch_saved_usd: Decimal | None = None  # its standard price less cost_usd


@dataclass(frozen=True)
class Billed:
    """What the provider billed for a call that failed (see ``workers/providers/usage.py``)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal | None


@dataclass(frozen=True)
class CallFailure:
    error_type: str
    message: str
    http_status: int | None
    retry_after_s: float | None
    latency_ms: int
    retryable: bool
    billed: Billed | None = None  # None: the provider billed nothing, as far as llmq can tell


@dataclass(frozen=True)
class Completion:
    """A successful call to record with :func:`complete_jobs`."""

    claim: ClaimedJob
    result: CallResult
