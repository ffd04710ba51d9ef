"""The tables: tenants and their API keys, jobs, provider attempts, webhook events and deliveries.

The database is the source of truth for every job; the broker only carries job ids.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from llmq.models.base import Base, JSONType, utcnow
from llmq.models.state import JobStatus


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    webhook_secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # --- governance (docs: README "Tenants, limits and budgets") ---
    # The tier names a [tiers.<name>] table of the providers file: rpm at submit, tpm and calls
    # in flight fleet-wide, and the tenant's weight in the models' wait lines.
    tier: Mapped[str] = mapped_column(String(32), default="free", server_default="free")
    rpm: Mapped[int | None] = mapped_column(Integer)  # overrides of the tier's limits
    tpm: Mapped[int | None] = mapped_column(Integer)
    concurrency: Mapped[int | None] = mapped_column(Integer)
    # Budgets in USD per budget_period (month | week | day), reserved before every call.
    budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(18, 8))  # the whole tenant
    user_budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(18, 8))  # each end user
    budget_period: Mapped[str] = mapped_column(String(16), default="month", server_default="month")
    # Fractions of a budget that emit a budget.threshold event, once per period (None: [0.8]).
    budget_thresholds: Mapped[list[float] | None] = mapped_column(JSONType)
    # Where the tenant's own events (budget.threshold) are POSTed, signed like job events.
    webhook_url: Mapped[str | None] = mapped_column(Text)
    disabled_at: Mapped[datetime | None]


class ApiKey(Base):
    """Only the SHA-256 of a key is stored; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(24))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    name: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[datetime | None]
    allowed_models: Mapped[list[str] | None] = mapped_column(JSONType)  # None: every model
    rpm: Mapped[int | None] = mapped_column(Integer)  # overrides of the tenant's limits
    tpm: Mapped[int | None] = mapped_column(Integer)
    concurrency: Mapped[int | None] = mapped_column(Integer)
    budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(18, 8))  # per the tenant's period
    rotated_from: Mapped[str | None] = mapped_column(String(40))  # the key this one replaced


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status_next_attempt", "status", "next_attempt_at"),
        # The sweeper's questions: which queued jobs lost their message, which leases expired.
        Index("ix_jobs_status_enqueued", "status", "enqueued_at"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_status_deadline", "status", "deadline_at"),
        Index("ix_jobs_provider_batch", "provider_batch_id"),
        # A batch's line jobs by state: its counts and its finalization read only this index.
        Index("ix_jobs_batch_status", "batch_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)

    # --- the request ---------------------------------------------------------------------------
    model: Mapped[str] = mapped_column(String(200))
    # OpenAI's message shape: content a string or content parts (text, image_url), and the
    # assistant's tool_calls / a tool message's tool_call_id when a conversation goes on.
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    # (0007_request_surface) tools, tool_choice, response_format, stop, seed, top_p, n as
    # given, in OpenAI's spelling; None for a job that gave none (the common, cheapest case).
    request_options: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    max_tokens: Mapped[int | None] = mapped_column(Integer)
    temperature: Mapped[float | None] = mapped_column(Float)
    end_user: Mapped[str | None] = mapped_column("user", String(128))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSONType, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    deadline_at: Mapped[datetime | None]
    fallbacks: Mapped[list[str] | None] = mapped_column(JSONType)  # the job's own chain, if given
    use_cache: Mapped[bool | None] = mapped_column(Boolean)  # None: as the settings say
    degraded_ok: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    priority: Mapped[str] = mapped_column(String(16), default="interactive", server_default="interactive")
    api_key_id: Mapped[str | None] = mapped_column(String(40))  # the key it was submitted with
    # A call that does not fit the budget: fail the job (False) or wait for the next period.
    budget_wait: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # --- correlation (0006_request_id): the submit's X-Request-ID and W3C traceparent --------
    request_id: Mapped[str | None] = mapped_column(String(128))
    traceparent: Mapped[str | None] = mapped_column(String(64))
    # --- the OpenAI-style batch (0009_files_batches) the job is a line of, if any --------------
    batch_id: Mapped[str | None] = mapped_column(String(40))

    # --- routing: the model the next attempt uses (a fallback moves it along the chain) ---------
    current_model: Mapped[str | None] = mapped_column(String(200))
    model_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    # --- progress and outcome ------------------------------------------------------------------
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    served_by: Mapped[str | None] = mapped_column(String(200))
    route_reason: Mapped[str | None] = mapped_column(String(200))  # why "auto" chose its model
    partial_text: Mapped[str | None] = mapped_column(Text)  # streamed so far, while processing
    cached: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    degraded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    result_text: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    # What a result holds besides text (0007_request_surface): {"tool_calls": [...]} and/or
    # {"choices": [...]} (n > 1); None for a text-only answer.
    result_extra: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    # Of prompt_tokens, the answering call's: read from / written to the provider's prompt cache.
    cached_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_write_tokens: Mapped[int | None] = mapped_column(Integer)
    # The sum over the job's attempts that the provider billed (a retried job costs what all its
    # billed attempts cost); None while none had a price.
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(18, 8))
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # --- provider batch APIs (0010): the provider batch that took the job (never cleared: a job
    # goes in one at most), whether its result came from it, what that saved on the standard price
    provider_batch_id: Mapped[str | None] = mapped_column(String(40))
    via_batch: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    batch_saved_usd: Mapped[Decimal | None] = mapped_column(Numeric(18, 8))

    # --- scheduling: who holds it, when it runs next -------------------------------------------
    lease_token: Mapped[str | None] = mapped_column(String(40))
    lease_expires_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    wait_reason: Mapped[str | None] = mapped_column(String(32))
    enqueued_at: Mapped[datetime | None]

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Attempt(Base):
    """One row per provider call, written before the call starts and finished after it ends."""

    __tablename__ = "job_attempts"
    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_job_attempts_job_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    worker: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(32), default="running")
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    retry_after_s: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    # Of the prompt tokens: read from the provider's prompt cache (OpenAI cached_tokens,
    # Anthropic cache_read_input_tokens) and written to it (Anthropic cache_creation_input_tokens).
    cached_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_write_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(18, 8))  # what the provider billed


class ProviderBatch(Base):
    """One batch sent through a provider's batch API (``tasks/provider_batches.py``): its jobs
    hold ``lease_token`` while it runs. ``state``: gathered → sending → submitted → ended, or
    abandoned (its jobs handed back to the normal path)."""

    __tablename__ = "provider_batches"
    __table_args__ = (Index("ix_provider_batches_state_poll", "state", "next_poll_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))
    lease_token: Mapped[str] = mapped_column(String(40))
    job_count: Mapped[int] = mapped_column(Integer)
    remote_id: Mapped[str | None] = mapped_column(String(128))  # the provider's batch id
    remote_status: Mapped[str | None] = mapped_column(String(32))
    input_file_id: Mapped[str | None] = mapped_column(String(128))  # OpenAI: the uploaded JSONL
    output_file_id: Mapped[str | None] = mapped_column(String(128))
    error_file_id: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    submitted_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    next_poll_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]


class WebhookEvent(Base):
    """One event per job and final state (or per tenant event, such as ``budget.threshold``,
    with no job); its id is the ``webhook-id`` of every delivery."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("job_id", "type", name="uq_webhook_events_job_type"),
        Index("ix_webhook_events_status_next_attempt", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)  # the exact body sent on every attempt
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    success: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)


class UsageCounters:
    """The counters a rollup row and a totals row both keep (one definition, so the two tables
    and the upserts that add to them cannot drift apart)."""

    calls: Mapped[int] = mapped_column(BigInteger, default=0)
    failures: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 8), default=Decimal(0))


class UsageRollup(UsageCounters, Base):
    """Usage per tenant, UTC day, model, end user, key and the rolled-up metadata keys, kept
    current in the transaction that ends each attempt: ``GET /v1/usage`` sums these rows, never
    the jobs. The empty string stands for "none" in the key columns (they are part of the unique
    key, and NULLs are never equal)."""

    __tablename__ = "usage_rollups"
    __table_args__ = (
        UniqueConstraint(
            "tenant_id", "day", "model", "end_user", "api_key_id", "dims", name="uq_usage_rollups_key"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    day: Mapped[date] = mapped_column(Date)
    model: Mapped[str] = mapped_column(String(200))
    end_user: Mapped[str] = mapped_column(String(128), default="")
    api_key_id: Mapped[str] = mapped_column(String(40), default="")
    dims: Mapped[str] = mapped_column(String(1024), default="")  # canonical JSON of metadata keys


class UsageTotal(UsageCounters, Base):
    """Running totals per tenant and model since the start: the Prometheus counters, read at a
    scrape in one small query (a row per tenant and model, never a scan of the jobs)."""

    __tablename__ = "usage_totals"

    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)


class BudgetAlert(Base):
    """A soft threshold of a budget crossed in one period: written once (the unique key), with
    the ``budget.threshold`` event, so the event is sent once per period whichever worker saw it."""

    __tablename__ = "budget_alerts"
    __table_args__ = (
        UniqueConstraint("scope", "period_start", "threshold", name="uq_budget_alerts_scope_period"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    scope: Mapped[str] = mapped_column(String(300))  # tenant:<id> | user:<id>:<user> | key:<id>
    period_start: Mapped[datetime]
    threshold: Mapped[float] = mapped_column(Float)
    spent_usd: Mapped[Decimal] = mapped_column(Numeric(18, 8))
    budget_usd: Mapped[Decimal] = mapped_column(Numeric(18, 8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def public_usage(job: Any) -> dict[str, int] | None:
    """The ``usage`` of the job object (None before any token was counted)."""
    if job.prompt_tokens is None and job.completion_tokens is None:
        return None
    return {
        "prompt_tokens": job.prompt_tokens or 0,
        "completion_tokens": job.completion_tokens or 0,
        "total_tokens": job.total_tokens or 0,
        "cached_tokens": job.cached_tokens or 0,
        "cache_write_tokens": job.cache_write_tokens or 0,
    }


def public_result(job: Any) -> dict[str, Any] | None:
    """The ``result`` of the job object: a completed job's text, finish reason, tool calls and
    choices (None until it completed)."""
    if job.status != "completed":
        return None
    extra = job.result_extra or {}
    return {
        "text": job.result_text or "",
        "finish_reason": job.finish_reason,
        "tool_calls": extra.get("tool_calls"),
        "choices": extra.get("choices"),
    }


def job_public(job: Any) -> dict[str, Any]:
    """The job object of the API (SPEC "Read"): used by the API, webhooks and the CLI alike.

    Its keys are the fields of ``JobOut`` (api/schemas.py), which documents it in the OpenAPI
    schema: the models sit below the API and cannot derive one from the other, so
    tests/unit/test_job_shape.py holds the two equal (same names, ``JobOut`` accepts the output)."""
    from llmq.models.base import isoformat

    usage = public_usage(job)
    result = public_result(job)
    error = None
    if job.error_type:
        error = {"type": job.error_type, "message": job.error_message or ""}
    return {
        "id": job.id,
        "object": "job",
        "status": job.status,
        "model": job.model,
        "served_by": job.served_by,
        "route_reason": job.route_reason,
        "created_at": isoformat(job.created_at),
        "started_at": isoformat(job.started_at),
        "completed_at": isoformat(job.completed_at),
        "attempts": job.attempts,
        "progress": job.progress,
        "partial_text": job.partial_text if job.status == "processing" else None,
        "result": result,
        "usage": usage,
        "cost_usd": float(job.cost_usd) if job.cost_usd is not None else None,
        "error": error,
        "metadata": job.metadata_ or {},
        "webhook_url": job.webhook_url,
        "next_attempt_at": isoformat(job.next_attempt_at),
        "wait_reason": job.wait_reason,
        "cached": bool(job.cached),
        "degraded": bool(job.degraded),
        "fallbacks": job.fallbacks,
        "priority": job.priority,
        "via_batch": bool(job.via_batch),
        "batch_saved_usd": float(job.batch_saved_usd) if job.batch_saved_usd is not None else None,
    }
