"""Read-only figures for the operations endpoints: bounded counts for ``/metrics``, recent attempts for
``/v1/providers``. Kept here so that the views hold no SQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from llmq.models.tables import Attempt, Job, Tenant


def parked_jobs(session: Session, *, cap: int) -> Sequence[Row[str, int]]:
    """``(wait_reason, count)`` of the queued jobs parked for a reason, reading at most ``cap``
    of them (through ``ix_jobs_status_next_attempt``): a scrape stays cheap however deep the
    backlog, and a count at ``cap`` means "at least"."""
    parked = (
        select(Job.wait_reason)
        .where(Job.status == "queued", Job.wait_reason.is_not(None))
        .limit(cap)
        .subquery()
    )
    return session.execute(select(parked.c.wait_reason, func.count()).group_by(parked.c.wait_reason)).all()


def budgeted_tenants(session: Session) -> Sequence[Row[str, str, Decimal | None, str]]:
    """``(id, name, budget_usd, budget_period)`` of the tenants with a budget (a small table)."""
    return session.execute(
        select(Tenant.id, Tenant.name, Tenant.budget_usd, Tenant.budget_period).where(
            Tenant.budget_usd.is_not(None)
        )
    ).all()


def recent_attempts(session: Session, *, since: datetime, limit: int) -> Sequence[Row[str, str, int | None]]:
    """``(model, outcome, latency_ms)`` of the attempts that started since ``since`` and ended,
    newest first, at most ``limit``."""
    return session.execute(
        select(Attempt.model, Attempt.outcome, Attempt.latency_ms)
        .where(Attempt.started_at >= since, Attempt.ended_at.is_not(None))
        .order_by(Attempt.started_at.desc())
        .limit(limit)
    ).all()
