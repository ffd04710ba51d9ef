"""SQLAlchemy models and the job state machine: the database is the source of truth."""

from llmq.models.base import Base
from llmq.models.batch_tables import Batch, BatchLineError, StoredFile
from llmq.models.state import JobStatus
from llmq.models.tables import ApiKey, Attempt, Job, Tenant, WebhookDelivery, WebhookEvent, job_public

__all__ = [
    "ApiKey",
    "Attempt",
    "Base",
    "Batch",
    "BatchLineError",
    "Job",
    "JobStatus",
    "StoredFile",
    "Tenant",
    "WebhookDelivery",
    "WebhookEvent",
    "job_public",
]
