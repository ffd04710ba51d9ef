"""The job state machine.

::

    queued ──claim──▶ processing ──▶ completed
      ▲  │                │  │
      │  │                │  └──────▶ failed
      │  │                └─ retry ──▶ queued (next_attempt_at set)
      │  └──────────────────────────▶ cancelled
      └─ (from processing, too) ───▶ cancelled

A final state is never left. Every transition (``submit.py``, ``claim.py``, ``finish.py``,
``recovery.py``) is a compare-and-set on the expected current status, so a duplicate task
delivery or a late worker changes nothing.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.PROCESSING})


class WebhookEventStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt (due at next_attempt_at)
    DELIVERED = "delivered"  # a 2xx answer was received
    EXHAUSTED = "exhausted"  # every attempt of the schedule failed
    STOPPED = "stopped"  # the receiver answered 410 Gone: never retried


class AttemptOutcome(StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    RETRYABLE_ERROR = "retryable_error"
    PERMANENT_ERROR = "permanent_error"
    DISCARDED = "discarded"  # the job ended (e.g. cancelled) while the call was in flight
    LOST = "lost"  # the worker vanished; found by the sweeper
    INTERRUPTED = "interrupted"  # the worker shut down (a deploy) and handed the job back
    CACHED = "cached"  # answered from the response cache: no provider call
    DEGRADED = "degraded"  # every model failed; the job asked for the template answer
