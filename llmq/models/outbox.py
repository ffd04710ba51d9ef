"""The webhook outbox on the database side: who sends an event next, and what each attempt gave.

The events themselves are written by the transitions that end a job (``finish.py``), in the same
transaction as the final state; this module is what happens to them afterwards, so the webhook
tasks and the API's event views share one set of queries.

An event is claimed for one send by pushing its ``next_attempt_at`` past the send's timeout
(compare-and-set), so two deliveries of the same task never POST the same attempt twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.orm import Session

from llmq.models.base import isoformat
from llmq.models.db import as_arrays, on_postgres
from llmq.models.state import WebhookEventStatus
from llmq.models.statements import DELIVERIES, EVENTS
from llmq.models.tables import Job, Tenant, WebhookDelivery, WebhookEvent


@dataclass(frozen=True)
class EventToSend:
    event_id: str
    url: str
    payload: str
    secret: str
    attempt: int  # 1-based number of this attempt
    # The job's correlation (None for a tenant event): its log lines and its delivery span.
    job_id: str | None = None
    request_id: str | None = None
    traceparent: str | None = None


# The event's job's correlation, read with the claim (a scalar subquery in its RETURNING list).
_JOB_REQUEST_ID = (
    select(Job.request_id).where(Job.id == WebhookEvent.job_id).scalar_subquery().label("request_id")
)
_JOB_TRACEPARENT = (
    select(Job.traceparent).where(Job.id == WebhookEvent.job_id).scalar_subquery().label("traceparent")
)


def claim_event(
    session: Session, event_id: str, *, now: datetime, hold_s: float, early_s: float = 0.5
) -> EventToSend | None:
    row = session.execute(
        update(WebhookEvent)
        .where(
            WebhookEvent.id == event_id,
            WebhookEvent.status == WebhookEventStatus.PENDING.value,
            WebhookEvent.next_attempt_at <= now + timedelta(seconds=early_s),
        )
        .values(
            attempts=WebhookEvent.attempts + 1,
            next_attempt_at=now + timedelta(seconds=hold_s),
            updated_at=now,
        )
        .returning(
            WebhookEvent.url,
            WebhookEvent.payload,
            WebhookEvent.tenant_id,
            WebhookEvent.attempts,
            WebhookEvent.job_id,
            _JOB_REQUEST_ID,
            _JOB_TRACEPARENT,
        )
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return None
    secret = session.scalar(select(Tenant.webhook_secret).where(Tenant.id == row.tenant_id))
    assert secret is not None
    return EventToSend(
        event_id=event_id,
        url=row.url,
        payload=row.payload,
        secret=secret,
        attempt=row.attempts,
        job_id=row.job_id,
        request_id=row.request_id,
        traceparent=row.traceparent,
    )


@dataclass(frozen=True)
class DeliveryRecord:
    """What one attempt of one event gave, and when the next attempt is due (None: no more)."""

    event: EventToSend
    now: datetime
    status_code: int | None
    latency_ms: int
    error: str | None
    success: bool
    next_attempt_at: datetime | None
    stop: bool = False

    @property
    def status(self) -> WebhookEventStatus:
        if self.success:
            return WebhookEventStatus.DELIVERED
        if self.stop:
            return WebhookEventStatus.STOPPED
        if self.next_attempt_at is None:
            return WebhookEventStatus.EXHAUSTED
        return WebhookEventStatus.PENDING


# An attempt moves its event only if the event still waits on that attempt (pending, and no newer
# attempt claimed since): a late record of an older attempt must not undo what a newer one did.
_MOVE_EVENT = (
    update(EVENTS)
    .where(
        EVENTS.c.id == bindparam("b_event_id"),
        EVENTS.c.status == WebhookEventStatus.PENDING.value,
        EVENTS.c.attempts == bindparam("b_attempt"),
    )
    .values(
        status=bindparam("b_status"),
        last_status_code=bindparam("b_status_code"),
        delivered_at=bindparam("b_delivered_at"),
        next_attempt_at=bindparam("b_next_at"),
        updated_at=bindparam("b_now"),
    )
    .returning(EVENTS.c.id)
)


_INSERT_DELIVERIES_FROM_ARRAYS = text(
    """
    INSERT INTO webhook_deliveries (event_id, attempt, attempted_at, status_code, latency_ms, success, error)
    SELECT * FROM unnest(CAST(:event_id AS text[]), CAST(:attempt AS integer[]),
                         CAST(:attempted_at AS timestamptz[]), CAST(:status_code AS integer[]),
                         CAST(:latency_ms AS integer[]), CAST(:success AS boolean[]), CAST(:error AS text[]))
    """
)
_MOVE_EVENTS_FROM_ARRAYS = text(
    """
    UPDATE webhook_events SET status = m.status, last_status_code = m.status_code,
        delivered_at = m.delivered_at, next_attempt_at = m.next_at, updated_at = m.now
    FROM unnest(CAST(:b_event_id AS text[]), CAST(:b_status AS text[]), CAST(:b_status_code AS integer[]),
                CAST(:b_delivered_at AS timestamptz[]), CAST(:b_next_at AS timestamptz[]),
                CAST(:b_now AS timestamptz[]), CAST(:b_attempt AS integer[]))
         AS m(id, status, status_code, delivered_at, next_at, now, attempt)
    WHERE webhook_events.id = m.id AND webhook_events.status = 'pending'
        AND webhook_events.attempts = m.attempt
    RETURNING webhook_events.id
    """
)


# What record_deliveries says of an attempt whose event had moved on without it (a newer attempt
# was claimed, or the event ended): the attempt is recorded, the event left as it is.
SUPERSEDED = "superseded"


def record_deliveries(session: Session, records: list[DeliveryRecord]) -> list[str]:
    """Write the attempts and move their events on, all in two statements. Returns each event's
    new status, or :data:`SUPERSEDED` for an event that no longer waited on that attempt."""
    if not records:
        return []
    deliveries = [
        {
            "event_id": r.event.event_id,
            "attempt": r.event.attempt,
            "attempted_at": r.now,
            "status_code": r.status_code,
            "latency_ms": r.latency_ms,
            "success": r.success,
            "error": r.error[:2000] if r.error else None,
        }
        for r in records
    ]
    moves = [
        {
            "b_event_id": r.event.event_id,
            "b_status": r.status.value,
            "b_status_code": r.status_code,
            "b_delivered_at": r.now if r.success else None,
            "b_next_at": r.next_attempt_at if r.status is WebhookEventStatus.PENDING else None,
            "b_now": r.now,
            "b_attempt": r.event.attempt,
        }
        for r in records
    ]
    if len(records) > 1 and on_postgres(session):
        # A batch: one statement each for the rows and the events, whatever the batch's size.
        session.execute(_INSERT_DELIVERIES_FROM_ARRAYS, as_arrays(deliveries))
        moved = set(session.scalars(_MOVE_EVENTS_FROM_ARRAYS, as_arrays(moves)))
    else:
        session.execute(insert(DELIVERIES), deliveries)
        moved = {event_id for move in moves for event_id in session.scalars(_MOVE_EVENT, move)}
    return [r.status.value if r.event.event_id in moved else SUPERSEDED for r in records]


def due_events(session: Session, *, now: datetime, limit: int = 500) -> list[str]:
    return list(
        session.scalars(
            select(WebhookEvent.id)
            .where(
                WebhookEvent.status == WebhookEventStatus.PENDING.value,
                WebhookEvent.next_attempt_at <= now,
            )
            .order_by(WebhookEvent.next_attempt_at)
            .limit(limit)
        )
    )


def events_for_job(session: Session, job_id: str) -> list[dict[str, Any]]:
    events = session.scalars(
        select(WebhookEvent).where(WebhookEvent.job_id == job_id).order_by(WebhookEvent.created_at)
    ).all()
    out = []
    for event in events:
        deliveries = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.event_id == event.id)
            .order_by(WebhookDelivery.attempted_at, WebhookDelivery.id)
        ).all()
        out.append(
            {
                "id": event.id,
                "type": event.type,
                "url": event.url,
                "status": event.status,
                "attempts": event.attempts,
                "next_attempt_at": isoformat(event.next_attempt_at),
                "delivered_at": isoformat(event.delivered_at),
                "deliveries": [
                    {
                        "attempt": d.attempt,
                        "attempted_at": isoformat(d.attempted_at),
                        "status_code": d.status_code,
                        "latency_ms": d.latency_ms,
                        "success": d.success,
                        "error": d.error,
                    }
                    for d in deliveries
                ],
            }
        )
    return out


def schedule_redelivery(session: Session, job_id: str, now: datetime) -> str | None:
    """Make the job's latest event due now, whatever its state; returns its id."""
    event = session.scalars(
        select(WebhookEvent).where(WebhookEvent.job_id == job_id).order_by(WebhookEvent.created_at.desc())
    ).first()
    if event is None:
        return None
    event.status = WebhookEventStatus.PENDING.value
    event.next_attempt_at = now
    event.updated_at = now
    return event.id
