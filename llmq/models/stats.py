"""Read-only figures for the operations endpoints: counts for ``/metrics``, recent attempts for
``/v1/providers``. Kept here so that the views hold no SQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from llmq.models.tables import Attempt, Job, WebhookDelivery


def jobs_by_status(session: Session) -> Sequence[Row[str, int]]:
    return session.execute(select(Job.status, func.count()).group_by(Job.status)).all()


def attempts_by_outcome(session: Session) -> Sequence[Row[str, str, int]]:
    """``(provider, outcome, count)``."""
    return session.execute(
        select(Attempt.provider, Attempt.outcome, func.count()).group_by(Attempt.provider, Attempt.outcome)
    ).all()


def deliveries_by_success(session: Session) -> Sequence[Row[bool, int]]:
    return session.execute(
        select(WebhookDelivery.success, func.count()).group_by(WebhookDelivery.success)
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
