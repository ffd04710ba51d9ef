"""Throttled progress writes for streamed calls.

A streaming call reports its text so far on every chunk; writing each one would cost a database
round trip per token. Reports are kept in memory instead and written every ``interval_s`` in one
UPDATE per flush (on Postgres a single ``UPDATE … FROM unnest(arrays)`` for every job in flight),
each row guarded by the job's lease so that nothing is written to a job that ended, was
cancelled or was taken over in between.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import cast

import structlog
from sqlalchemy import Table, bindparam, text, update

from llmq.models.db import Database, as_arrays
from llmq.models.state import JobStatus
from llmq.models.tables import Job

logger = structlog.get_logger(__name__)

MAX_PARTIAL_CHARS = 100_000

# Postgres: every report in one statement of fixed shape (four arrays), prepared once.
_UPDATE_FROM_ARRAYS = text(
    """
    UPDATE jobs SET progress = r.progress, partial_text = r.text
    FROM unnest(CAST(:job_id AS text[]), CAST(:token AS text[]), CAST(:new_progress AS float8[]),
                CAST(:new_text AS text[])) AS r(id, token, progress, text)
    WHERE jobs.id = r.id AND jobs.lease_token = r.token AND jobs.status = 'processing'
    """
)
# Other databases: the same update, once per report.
_JOBS = cast(Table, Job.__table__)
_UPDATE_EACH = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("job_id"),
        _JOBS.c.status == JobStatus.PROCESSING.value,
        _JOBS.c.lease_token == bindparam("token"),
    )
    .values(progress=bindparam("new_progress"), partial_text=bindparam("new_text"))
)


@dataclass
class _Report:
    lease_token: str
    text: str
    progress: float


class ProgressWriter(threading.Thread):
    def __init__(self, db: Database, interval_s: float = 1.0) -> None:
        super().__init__(name="llmq-progress-writer", daemon=True)
        self.db = db
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: dict[str, _Report] = {}
        self._stop = threading.Event()

    def report(self, job_id: str, lease_token: str, text: str, tokens: int, max_tokens: int) -> None:
        """Cheap, called from the event loop on every streamed chunk."""
        progress = min(0.99, tokens / max_tokens) if max_tokens > 0 else 0.0
        with self._lock:  # the text is kept as is (no copy); it is cut at the flush
            self._pending[job_id] = _Report(lease_token, text, progress)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._pending.pop(job_id, None)

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except Exception as exc:  # the database may be briefly away; the next flush catches up
                logger.warning("progress_flush_failed", error=type(exc).__name__)

    def flush(self) -> int:
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        rows = [
            {
                "job_id": job_id,
                "token": r.lease_token,
                "new_progress": r.progress,
                "new_text": r.text[-MAX_PARTIAL_CHARS:],
            }
            for job_id, r in batch.items()
        ]
        with self.db.transaction() as session:
            if self.db.engine.dialect.name == "postgresql":
                session.execute(_UPDATE_FROM_ARRAYS, as_arrays(rows))
            else:
                session.execute(_UPDATE_EACH, rows)
        return len(rows)

    def stop(self) -> None:
        self._stop.set()
