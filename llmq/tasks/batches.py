"""The tasks of ``/v1/batches``: ``llmq.batch_expand`` makes a batch's lines into jobs, and
``llmq.batch_tick`` (Celery beat, every ``LLMQ_BATCH_TICK_S``) moves every open batch along.

Expansion reads the input a chunk of ``LLMQ_BATCH_CHUNK_LINES`` lines per transaction and
enqueues each chunk's jobs once it is committed (a job the broker does not take is left to the
sweeper, as at submit). The tick, for each batch not yet ended:

- counts its line jobs by state from the ``(batch_id, status)`` index and stores the counts;
- in_progress, every line read and none queued or running: finalizing, then completed (or failed
  when no line could run), with its output and error files written;
- past its completion window: its queued and running lines cancelled (``batch_expired``), then
  expired, with the output of the lines that had ended;
- cancelling: its queued lines cancelled (``batch_cancelled``); once the running ones have ended,
  cancelled, with their output;
- an expansion that stopped moving (its message lost) is sent again.

Both run on the ``webhooks`` queue, beside the sweeper, never holding an LLM worker slot. A Redis
lock keeps to one tick at a time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import redis
import structlog

from llmq.config.providers import is_known_model, provider_specs
from llmq.models.base import utcnow
from llmq.models.batch_lines import LineRules, allowed_models_of, expand_chunk
from llmq.models.batch_output import Results, write_results
from llmq.models.batch_tables import Batch
from llmq.models.batches import (
    RUNNING,
    BatchAlreadyEnded,
    Outcome,
    active_batches,
    cancel_line_jobs,
    finish_batch,
    first_line_errors,
    line_counts,
    lock_batch,
    mark_finalizing,
    store_counts,
)
from llmq.models.files import FileStore, add_file
from llmq.models.state import JobStatus
from llmq.models.submit import mark_not_enqueued
from llmq.tasks.app import celery_app
from llmq.tasks.enqueue import enqueue_batch_expand, try_enqueue_jobs, try_enqueue_webhook
from llmq.tasks.inflight import publish_cancel
from llmq.tasks.runtime import WorkerRuntime, get_runtime
from llmq.workers.keys import BATCH_TICK_LOCK

logger = structlog.get_logger(__name__)
STALLED_EXPANSION_S = 30.0
ACTIVE_JOBS = (JobStatus.QUEUED.value, JobStatus.PROCESSING.value)


def store_of(rt: WorkerRuntime) -> FileStore:
    return FileStore(rt.settings.files_root)


def _rules(rt: WorkerRuntime, api_key_id: str | None) -> LineRules:
    specs = provider_specs(rt.settings)
    with rt.db.session() as session:
        allowed = allowed_models_of(session, api_key_id)
    return LineRules(
        known_model=lambda model: is_known_model(specs, model),
        allowed_models=allowed,
        max_attempts=rt.settings.max_attempts,
        timeout_s=rt.settings.job_timeout_s,
    )


def expand(rt: WorkerRuntime, batch_id: str) -> int:
    """Make every line of the batch into a job (or a refused line); the number of jobs made."""
    with rt.db.session() as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            return 0
        rules = _rules(rt, batch.api_key_id)
    store, made = store_of(rt), 0
    while True:
        now = utcnow()
        with rt.db.transaction() as session:
            chunk = expand_chunk(
                session, batch_id, store, rules, chunk_lines=rt.settings.batch_chunk_lines, now=now
            )
        unsent = try_enqueue_jobs(chunk.job_ids)
        if unsent:  # left to the sweeper, which sends every queued job never enqueued
            with rt.db.transaction() as session:
                for job_id in unsent:
                    mark_not_enqueued(session, job_id)
        made += len(chunk.job_ids)
        if chunk.done:
            logger.info("batch_expanded", batch_id=batch_id, jobs=made, status=chunk.status)
            return made


@celery_app.task(name="llmq.batch_expand", ignore_result=True, acks_late=True, time_limit=3600)
def expand_task(batch_id: str) -> int:
    return expand(get_runtime(), batch_id)


def _finish(
    rt: WorkerRuntime, batch_id: str, status: str, from_statuses: tuple[str, ...], now: datetime
) -> bool:
    """Write the batch's files and move it to ``status``. False when another finisher won."""
    store = store_of(rt)
    unread = {"expired": "batch_expired", "cancelled": "batch_cancelled"}.get(status)
    with rt.db.session() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        results = write_results(
            session, store, batch, unread_code=unread, chunk=rt.settings.batch_chunk_lines
        )
    errors = None
    if status == "completed" and results.completed == 0 and results.failed > 0:
        status = "failed"  # no line could run: the batch failed validation, as OpenAI says it
        errors = _first_errors(rt, batch_id)
    try:
        with rt.db.transaction() as session:
            tenant_id = batch.tenant_id
            for file_id, kind, size, lines in (
                (results.output_file_id, "output", results.output_bytes, results.completed),
                (results.error_file_id, "error", results.error_bytes, results.failed),
            ):
                if file_id is not None:
                    add_file(
                        session,
                        file_id=file_id,
                        tenant_id=tenant_id,
                        purpose="batch_output",
                        filename=f"{batch_id}_{kind}.jsonl",
                        size=size,
                        lines=lines,
                        now=now,
                    )
            event_id = finish_batch(
                session,
                batch_id,
                Outcome(
                    status=status,
                    output_file_id=results.output_file_id,
                    error_file_id=results.error_file_id,
                    total=results.total,
                    completed=results.completed,
                    failed=results.failed,
                    errors=errors,
                ),
                from_statuses=from_statuses,
                now=now,
            )
    except BatchAlreadyEnded:
        _discard(store, results)
        return False
    except BaseException:
        _discard(store, results)
        raise
    if event_id is not None:
        try_enqueue_webhook(event_id)
    logger.info(
        "batch_finished", batch_id=batch_id, status=status, completed=results.completed, failed=results.failed
    )
    return True


def _discard(store: FileStore, results: Results) -> None:
    for file_id in (results.output_file_id, results.error_file_id):
        if file_id is not None:
            store.discard(file_id)


def _first_errors(rt: WorkerRuntime, batch_id: str) -> list[dict[str, object]]:
    with rt.db.session() as session:
        return first_line_errors(session, batch_id)


def _cancel_lines(
    rt: WorkerRuntime, batch_id: str, statuses: tuple[str, ...], code: str, message: str
) -> int:
    cancelled = 0
    while True:
        with rt.db.transaction() as session:
            done = cancel_line_jobs(
                session, batch_id, statuses=statuses, code=code, message=message, now=utcnow()
            )
        for job_id in done.were_running:
            try:  # the worker calling it stops waiting on the provider now
                publish_cancel(rt.redis, job_id)
            except redis.RedisError:
                logger.warning("cancel_publish_failed", job_id=job_id)
        cancelled += len(done.job_ids)
        if not done.job_ids:
            return cancelled


def advance(rt: WorkerRuntime, batch_id: str) -> str:
    """One look at one batch: count its lines, and move it on if its time has come. Returns
    what was done (for the log and the tests)."""
    now = utcnow()
    with rt.db.session() as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            return "gone"
        status, expanded, expires_at, updated_at = (
            batch.status,
            batch.expanded,
            batch.expires_at,
            batch.updated_at,
        )
        counts = line_counts(session, batch_id)
    active = sum(counts.get(s, 0) for s in ACTIVE_JOBS)
    if status in RUNNING and now >= expires_at:
        with rt.db.transaction() as session:
            lock_batch(session, batch_id)  # waits out a chunk of the expansion still running
        _cancel_lines(rt, batch_id, ACTIVE_JOBS, "batch_expired", "the batch's completion window expired")
        return "expired" if _finish(rt, batch_id, "expired", RUNNING, now) else "raced"
    if status == "cancelling":
        _cancel_lines(rt, batch_id, (JobStatus.QUEUED.value,), "batch_cancelled", "the batch was cancelled")
        with rt.db.session() as session:
            counts = line_counts(session, batch_id)
        if counts.get(JobStatus.PROCESSING.value, 0) or counts.get(JobStatus.QUEUED.value, 0):
            with rt.db.transaction() as session:
                store_counts(session, batch_id, counts, now)
            return "cancelling"
        with rt.db.transaction() as session:
            lock_batch(session, batch_id)
        return "cancelled" if _finish(rt, batch_id, "cancelled", ("cancelling",), now) else "raced"
    if status == "in_progress" and expanded and active == 0:
        with rt.db.transaction() as session:
            mark_finalizing(session, batch_id, now)
        return "completed" if _finish(rt, batch_id, "completed", ("finalizing",), utcnow()) else "raced"
    if status == "finalizing":  # a finalization that did not end (the worker died in it)
        return "completed" if _finish(rt, batch_id, "completed", ("finalizing",), now) else "raced"
    if status in RUNNING and not expanded and updated_at < now - timedelta(seconds=STALLED_EXPANSION_S):
        enqueue_batch_expand(batch_id)
        return "expansion_resent"
    with rt.db.transaction() as session:
        store_counts(session, batch_id, counts, now)
    return "counted"


def tick(rt: WorkerRuntime) -> dict[str, str]:
    with rt.db.session() as session:
        open_batches = active_batches(session)
    done: dict[str, str] = {}
    for batch_id in open_batches:
        try:
            done[batch_id] = advance(rt, batch_id)
        except Exception:  # one bad batch must not stop the others; the next tick tries again
            logger.exception("batch_tick_failed", batch_id=batch_id)
            done[batch_id] = "error"
    return done


@celery_app.task(name="llmq.batch_tick", ignore_result=True)
def tick_task() -> dict[str, str]:
    rt = get_runtime()
    lock = rt.redis.lock(BATCH_TICK_LOCK, timeout=600)
    if not lock.acquire(blocking=False):
        return {}
    try:
        return tick(rt)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass
