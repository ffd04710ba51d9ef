"""The plain data the transitions take and give: new jobs, claims, call outcomes, results, errors.

Kept apart from the statements so that the tasks and the API can name these types (a worker
passes a ``ClaimedJob`` between threads, the API catches ``JobNotFound``) without importing any
transition, and so that every transition module shares one definition of each.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmq.models.outbox import EventToSend
from llmq.models.state import JobStatus
from llmq.models.statements import TENANTS
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
    model: str
    messages: list[dict[str, str]]
    max_tokens: int | None = None
    temperature: float | None = None
    user: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    fallbacks: list[str] | None = None
    use_cache: bool | None = None
    degraded_ok: bool = False

    def fingerprint(self) -> str:
        canonical = json.dumps(
            {
                "model": self.model,
                "messages": self.messages,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
                "user": self.user,
                "webhook_url": self.webhook_url,
                "metadata": self.metadata,
                "timeout_s": self.timeout_s,
                "fallbacks": self.fallbacks,
                "use_cache": self.use_cache,
                "degraded_ok": self.degraded_ok,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to make one provider call; plain data, safe to pass between threads."""

    job_id: str
    tenant_id: str
    lease_token: str
    attempt_number: int
    max_attempts: int
    model: str
    messages: list[dict[str, str]]
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
    worker: str | None = None
    # The rest of the job as the claim left it, so a completion can state the job's public view
    # (its webhook payload) without reading the row again.
    route_reason: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, str] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    attempt_opened: bool = False  # the claim also wrote the attempt row (Postgres)


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
    prompt_tokens: int
    completion_tokens: int
    served_by: str | None
    cost_usd: Decimal | None
    latency_ms: int
    cached: bool = False
    degraded: bool = False
    http_status: int | None = 200


@dataclass(frozen=True)
class CallFailure:
    error_type: str
    message: str
    http_status: int | None
    retry_after_s: float | None
    latency_ms: int
    retryable: bool


@dataclass(frozen=True)
class Completion:
    """A successful call to record with :func:`complete_jobs`."""

    claim: ClaimedJob
    result: CallResult
