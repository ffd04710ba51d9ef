"""Bulk jobs in a provider's batch API, on the database side: gathered, sent, polled, handed back.

A bulk job that will go by provider batch waits ``queued`` with ``wait_reason =
"provider_batch"`` (the gate parks it so). :func:`gather` moves a model's waiting jobs to
``processing`` under one lease token, the batch's, opens an attempt for each and writes the
``provider_batches`` row, in one transaction: from then on the batch owns them, and the normal
path cannot claim them (they are not queued). Their lease is renewed at every poll; a batch whose
poller is gone for ``lease_s`` lets the sweeper hand them back like any lost worker's.

Every write to a batch is a compare-and-set on its state, so two senders never both send it; a
job's result is written through the same finish path as a normal call (``finish.py``), guarded
by the batch's lease token, so a job cancelled meanwhile keeps its ``cancelled``.

    gathered ──▶ sending ──▶ submitted ──▶ ended
                   │  (remote id recorded before it is relied on)
                   └──▶ abandoned (never sent, or lost in the sending: jobs back to the normal path)
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.orm import Session

from llmq.models.base import new_id
from llmq.models.finish import _finish_attempt
from llmq.models.records import CLAIMED_COLUMNS, ClaimedJob
from llmq.models.state import AttemptOutcome, JobStatus
from llmq.models.statements import ATTEMPTS, JOBS, compare_and_set, holds_lease
from llmq.models.tables import ProviderBatch

WAITING = "provider_batch"  # the wait_reason of a bulk job waiting for a provider batch
_TABLE = cast(Table, ProviderBatch.__table__)


class BatchState:
    GATHERED = "gathered"
    SENDING = "sending"
    SUBMITTED = "submitted"
    ENDED = "ended"
    ABANDONED = "abandoned"


_JOB_MODEL = func.coalesce(JOBS.c.current_model, JOBS.c.model)
_WAITING = (
    (JOBS.c.status == JobStatus.QUEUED.value)
    & (JOBS.c.wait_reason == WAITING)
    & JOBS.c.provider_batch_id.is_(None)
)


def waiting_models(session: Session) -> list[tuple[str, int, datetime]]:
    """``(model, jobs waiting, since when the longest has waited)`` for every model with bulk
    jobs waiting for a provider batch."""
    rows = session.execute(
        select(_JOB_MODEL, func.count(), func.min(JOBS.c.updated_at)).where(_WAITING).group_by(_JOB_MODEL)
    ).all()
    return [(str(row[0]), int(row[1]), row[2]) for row in rows]


def gather(
    session: Session, *, provider: str, model: str, limit: int, lease_s: float, now: datetime
) -> ProviderBatch | None:
    """Take up to ``limit`` of ``model``'s waiting jobs (longest waiting first) into a new
    provider batch; None when another gatherer took them first."""
    batch_id = new_id("pb_")
    token = "pb-" + secrets.token_hex(12)
    chosen = (
        select(JOBS.c.id)
        .where(_WAITING, _JOB_MODEL == model)
        .order_by(JOBS.c.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    claimed = session.execute(
        update(JOBS)
        .where(JOBS.c.id.in_(chosen), _WAITING)
        .values(
            status=JobStatus.PROCESSING.value,
            attempts=JOBS.c.attempts + 1,
            model_attempts=JOBS.c.model_attempts + 1,
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=lease_s),
            next_attempt_at=None,
            wait_reason=None,
            provider_batch_id=batch_id,
            started_at=func.coalesce(JOBS.c.started_at, now),
            updated_at=now,
        )
        .returning(JOBS.c.id, JOBS.c.attempts)
        .execution_options(synchronize_session=False)
    ).all()
    if not claimed:
        return None
    session.execute(
        insert(ATTEMPTS),
        [
            {
                "job_id": job_id,
                "number": number,
                "provider": provider,
                "model": model,
                "worker": f"provider-batch:{batch_id}",
                "started_at": now,
                "outcome": AttemptOutcome.RUNNING.value,
            }
            for job_id, number in claimed
        ],
    )
    batch = ProviderBatch(
        id=batch_id,
        provider=provider,
        model=model,
        state=BatchState.GATHERED,
        lease_token=token,
        job_count=len(claimed),
        created_at=now,
        updated_at=now,
    )
    session.add(batch)
    session.flush()
    return batch


def move(session: Session, batch_id: str, expected: str | Sequence[str], **values: Any) -> bool:
    """Compare-and-set on a batch's state: True when this write moved it."""
    states = [expected] if isinstance(expected, str) else list(expected)
    return compare_and_set(
        session,
        update(_TABLE)
        .where(_TABLE.c.id == batch_id, _TABLE.c.state.in_(states))
        .values(**values)
        .execution_options(synchronize_session=False),
    )


def take_over_stale(
    session: Session, batch_id: str, state: str, *, stale_before: datetime, now: datetime
) -> bool:
    """Claim a batch left in ``state`` since before ``stale_before`` (its sender died)."""
    return compare_and_set(
        session,
        update(_TABLE)
        .where(_TABLE.c.id == batch_id, _TABLE.c.state == state, _TABLE.c.updated_at < stale_before)
        .values(updated_at=now)
        .execution_options(synchronize_session=False),
    )


def batches_in(
    session: Session, state: str, *, due_by: datetime | None = None, limit: int = 50
) -> list[ProviderBatch]:
    stmt = select(ProviderBatch).where(ProviderBatch.state == state)
    if due_by is not None:
        stmt = stmt.where(ProviderBatch.next_poll_at <= due_by)
    batches = list(session.scalars(stmt.order_by(ProviderBatch.created_at).limit(limit)))
    session.expunge_all()
    return batches


def held_jobs(session: Session, batch: ProviderBatch) -> list[ClaimedJob]:
    """The batch's jobs it still holds (not cancelled, not taken back by the sweeper), as claims
    the finish path takes."""
    rows = session.execute(
        select(JOBS.c.id, *(JOBS.c[column].label(name) for name, column in CLAIMED_COLUMNS.items())).where(
            JOBS.c.provider_batch_id == batch.id,
            JOBS.c.status == JobStatus.PROCESSING.value,
            JOBS.c.lease_token == batch.lease_token,
        )
    ).all()
    claims = []
    for row in rows:
        fields = row._asdict()
        job_id = fields.pop("id")
        claims.append(
            ClaimedJob(
                job_id=job_id,
                lease_token=batch.lease_token,
                model=fields["current_model"] or fields["requested_model"],
                worker=f"provider-batch:{batch.id}",
                attempt_opened=True,
                **fields,
            )
        )
    return claims


def renew_batch_leases(session: Session, batch: ProviderBatch, *, until: datetime, now: datetime) -> int:
    """Push the lease of the batch's jobs to ``until``; a job whose deadline has passed is left to
    expire (the sweeper then fails it for its deadline)."""
    result = session.execute(
        update(JOBS)
        .where(
            JOBS.c.provider_batch_id == batch.id,
            JOBS.c.status == JobStatus.PROCESSING.value,
            JOBS.c.lease_token == batch.lease_token,
            JOBS.c.deadline_at.is_(None) | (JOBS.c.deadline_at > now),
        )
        .values(lease_expires_at=until)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0))


def give_back(session: Session, claim: ClaimedJob, now: datetime, *, error_type: str, message: str) -> bool:
    """``processing → queued`` for the normal path: the job's line never ran (expired, cancelled,
    the batch was never sent). The attempt is recorded as interrupted; nothing was billed. The
    job keeps its ``provider_batch_id``, so it never goes in another batch."""
    applied = compare_and_set(
        session,
        update(JOBS)
        .where(holds_lease(claim.job_id, claim.lease_token))
        .values(
            status=JobStatus.QUEUED.value,
            lease_token=None,
            lease_expires_at=None,
            next_attempt_at=None,
            wait_reason=None,
            enqueued_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False),
    )
    outcome = AttemptOutcome.INTERRUPTED if applied else AttemptOutcome.DISCARDED
    _finish_attempt(session, claim, now, outcome=outcome.value, error_type=error_type, error_message=message)
    return applied
