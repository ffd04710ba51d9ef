"""Progress of streamed calls: kept in Redis while the call runs, read by the API.

A streaming call reports its text so far on every chunk. The reports are kept in memory and
written every ``interval_s``, all of a process's in one Redis pipeline, under
``llmq:progress:<job id>`` (``PROGRESS_KEY`` in ``workers/keys.py``) with the lease token of the
attempt that wrote them. They live in Redis, not in the job's row: with a thousand calls in
flight, a row update per job per second was the largest single cost of the database and held row
locks the completions then waited on (measured in BENCHMARKS.md). Progress is worth nothing once
the job ends, so nothing durable is lost; the job's row keeps its final ``progress`` and clears
``partial_text`` as before.

The API shows a report only for a job that is ``processing`` under the same lease token: a report
of an earlier attempt, or one written after the job ended, is never shown. Keys expire after
``ttl_s`` (a lease) without a new report.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis
import structlog

from llmq.models.state import JobStatus
from llmq.workers.keys import PROGRESS_KEY

logger = structlog.get_logger(__name__)

MAX_PARTIAL_CHARS = 100_000


@dataclass
class _Report:
    lease_token: str
    text: str
    progress: float


class ProgressWriter(threading.Thread):
    def __init__(self, client: redis.Redis, interval_s: float = 1.0, ttl_s: float = 60.0) -> None:
        super().__init__(name="llmq-progress-writer", daemon=True)
        self.client = client
        self.interval_s = interval_s
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._lock = threading.Lock()
        self._pending: dict[str, _Report] = {}
        self._stopping = threading.Event()

    def report(self, job_id: str, lease_token: str, text: str, tokens: int, max_tokens: int) -> None:
        """Cheap, called from the event loop on every streamed chunk."""
        progress = min(0.99, tokens / max_tokens) if max_tokens > 0 else 0.0
        with self._lock:  # the text is kept as is (no copy); it is cut at the flush
            self._pending[job_id] = _Report(lease_token, text, progress)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._pending.pop(job_id, None)

    def run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.flush()
            except redis.RedisError as exc:  # Redis may be briefly away; the next flush catches up
                logger.warning("progress_flush_failed", error=type(exc).__name__)

    def flush(self) -> int:
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for job_id, r in batch.items():
            value = json.dumps(
                {"token": r.lease_token, "progress": r.progress, "text": r.text[-MAX_PARTIAL_CHARS:]}
            )
            pipe.set(PROGRESS_KEY.format(job_id), value, px=self.ttl_ms)
        pipe.execute()
        return len(batch)

    def stop(self) -> None:
        self._stopping.set()


def show_live_progress(client: redis.Redis, jobs: Iterable[tuple[Any, dict[str, Any]]]) -> None:
    """Put the running jobs' latest reports into their public views: ``jobs`` pairs each job
    (with its ``lease_token``) with its ``job_public`` dict. Without Redis the views keep what
    the row says."""
    running = [(job, view) for job, view in jobs if job.status == JobStatus.PROCESSING.value]
    if not running:
        return
    try:
        values = cast(list[Any], client.mget([PROGRESS_KEY.format(job.id) for job, _ in running]))
    except redis.RedisError as exc:
        logger.warning("progress_read_failed", error=type(exc).__name__)
        return
    for (job, view), value in zip(running, values, strict=True):
        if value is None:
            continue
        report = json.loads(value)
        if report.get("token") == job.lease_token:
            view["progress"] = report["progress"]
            view["partial_text"] = report["text"]
