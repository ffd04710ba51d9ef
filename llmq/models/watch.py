"""What a waiting reader asks of a job again and again: its status and lease, in one primary-key
read of two columns (``/v1/chat/completions`` waits on a job this way, a session per look)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmq.models.state import ACTIVE_STATUSES
from llmq.models.tables import Job


@dataclass(frozen=True)
class JobState:
    status: str
    lease_token: str | None

    @property
    def ended(self) -> bool:
        return self.status not in ACTIVE_STATUSES


def job_state(session: Session, tenant_id: str, job_id: str) -> JobState | None:
    """The job's status and lease token; None when the tenant has no such job."""
    row = session.execute(
        select(Job.status, Job.lease_token).where(Job.id == job_id, Job.tenant_id == tenant_id)
    ).first()
    return None if row is None else JobState(row[0], row[1])
