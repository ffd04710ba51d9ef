"""What the database says a budget's scope spent in a period: the sum of the usage rollup's
``cost_usd`` since the period's first day. The worker seeds its Redis counter with it when the
counter is missing (a new period, or Redis lost it): Redis is the hot counter, this is the truth.

The rollup is kept per UTC day, so a period (a UTC month, week or day) is a whole number of its
rows: no job is scanned, whatever their number."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from llmq.models.tables import UsageRollup


def spent_usd(
    session: Session,
    *,
    tenant_id: str,
    start: datetime,
    end: datetime,
    user: str | None = None,
    key_id: str | None = None,
) -> Decimal:
    """The cost of the tenant's calls in ``[start, end)`` (UTC days), only those of end user
    ``user`` or of API key ``key_id`` when given."""
    query = select(func.coalesce(func.sum(UsageRollup.cost_usd), 0)).where(
        UsageRollup.tenant_id == tenant_id,
        UsageRollup.day >= start.date(),
        UsageRollup.day < end.date(),
    )
    if user is not None:
        query = query.where(UsageRollup.end_user == user)
    if key_id is not None:
        query = query.where(UsageRollup.api_key_id == key_id)
    return Decimal(session.scalar(query) or 0)
