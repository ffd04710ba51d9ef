"""A budget's soft threshold crossed: the ``budget_alerts`` row that makes it once per period,
and the ``budget.threshold`` webhook event written with it (the outbox, as for job events).

The alert row is unique on (scope, period start, threshold): of the workers that see the same
crossing (only one should, the ledger's settle is atomic, but a Redis restart can replay one),
the insert that wins writes the event; the others write nothing. A tenant without a
``webhook_url`` gets the row and no event."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from llmq.models.base import isoformat, new_id
from llmq.models.db import on_postgres
from llmq.models.state import WebhookEventStatus
from llmq.models.statements import INSERT_EVENT, TENANTS
from llmq.models.tables import BudgetAlert

EVENT_TYPE = "budget.threshold"


@dataclass(frozen=True)
class Crossing:
    tenant_id: str
    scope: str  # tenant:<id> | user:<id>:<user> | key:<id>
    kind: str  # tenant | user | key
    user: str | None
    key_id: str | None
    threshold: float
    budget_usd: Decimal
    spent_usd: Decimal
    period_start: datetime
    period_end: datetime


def record_crossing(session: Session, crossing: Crossing, now: datetime) -> str | None:
    """Write the alert, once per scope, period and threshold, and its event when the tenant has
    a webhook URL. Returns the event's id to enqueue (None: nothing to send)."""
    table = cast(Table, BudgetAlert.__table__)
    insert = postgresql.insert(table) if on_postgres(session) else sqlite.insert(table)
    won = session.execute(
        insert.values(
            tenant_id=crossing.tenant_id,
            scope=crossing.scope,
            period_start=crossing.period_start,
            threshold=crossing.threshold,
            spent_usd=crossing.spent_usd,
            budget_usd=crossing.budget_usd,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["scope", "period_start", "threshold"])
        .returning(table.c.id)
    ).first()
    if won is None:
        return None
    url = session.scalar(select(TENANTS.c.webhook_url).where(TENANTS.c.id == crossing.tenant_id))
    if not url:
        return None
    data: dict[str, object] = {"scope": crossing.kind, "tenant_id": crossing.tenant_id}
    if crossing.user is not None:
        data["user"] = crossing.user
    if crossing.key_id is not None:
        data["key_id"] = crossing.key_id
    data.update(
        threshold=crossing.threshold,
        budget_usd=float(crossing.budget_usd),
        spent_usd=float(crossing.spent_usd),
        period_start=isoformat(crossing.period_start),
        period_end=isoformat(crossing.period_end),
    )
    event_id = new_id("msg_")
    session.execute(
        INSERT_EVENT,
        {
            "id": event_id,
            "job_id": None,
            "tenant_id": crossing.tenant_id,
            "type": EVENT_TYPE,
            "url": url,
            "payload": json.dumps(
                {"type": EVENT_TYPE, "timestamp": isoformat(now), "data": data}, separators=(",", ":")
            ),
            "status": WebhookEventStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        },
    )
    return event_id
