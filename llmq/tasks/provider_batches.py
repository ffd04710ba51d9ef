"""``llmq.provider_batches``, run by Celery beat: bulk jobs gathered into the providers' batch
APIs, sent, polled, and their results written back to the jobs at the batch price.

One run does three things, each a step that a crash at any point leaves safe to do again:

1. **gather**: for each model with bulk jobs parked for a batch (``gate/provider_batch.py``),
   once ``min_jobs`` wait or the longest has waited ``max_wait_s``, take up to ``max_jobs`` of
   them into a ``provider_batches`` row (one transaction: the batch owns them from then on);
2. **send**: ``gathered → sending`` (compare-and-set: one sender), OpenAI: upload the JSONL and
   record the file's id, create the batch (its ``metadata`` names llmq's batch) and record its id
   (``→ submitted``); Anthropic: create the batch with the requests inline and record its id. A
   batch left ``sending`` for ``step_timeout_s`` (its sender died) is resumed: OpenAI looks the
   batch up by its metadata and adopts it, or creates it if it is not there; Anthropic cannot
   tell, so its jobs go back to the normal path (the batch, if the provider did take it, is never
   read: a job is never sent in a second batch). A provider that refuses a step: the same;
3. **poll**: each submitted batch due for a poll is retrieved and its jobs' leases renewed; once
   it has ended, every line is written into its job through the normal finish path: an answer
   completes it (usage, cost at the batch price, ``via_batch``, ``batch_saved_usd``), a failed
   line is a failed attempt for the retry policy (retried by the normal path, or failed), a line
   that never ran (expired, cancelled, missing) hands its job back to the normal path. Writes are
   guarded by the batch's lease token, so doing them twice changes nothing.

A Redis lock keeps it to one run at a time; the compare-and-sets make two runs harmless anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

import redis
import structlog

from llmq.models.base import utcnow
from llmq.models.finish import complete_job, complete_jobs, fail_attempt
from llmq.models.provider_batches import (
    BatchState,
    batches_in,
    gather,
    give_back,
    held_jobs,
    move,
    renew_batch_leases,
    take_over_stale,
    waiting_models,
)
from llmq.models.records import Billed, CallFailure, CallResult, ClaimedJob, Completion
from llmq.models.tables import ProviderBatch
from llmq.tasks import observe
from llmq.tasks.app import celery_app
from llmq.tasks.call import request_for, result_extra
from llmq.tasks.enqueue import enqueue_job, try_enqueue_webhook
from llmq.tasks.gate import model_chain
from llmq.tasks.policy import after_failure
from llmq.tasks.provider_batch_budgets import renew_holds, reserve_lines, settle_lines
from llmq.tasks.runtime import WorkerRuntime, get_runtime
from llmq.workers.keys import PROVIDER_BATCH_LOCK
from llmq.workers.providers.base import ProviderResponse, ProviderUsage
from llmq.workers.providers.batch_clients import BatchApi, BatchRefused, RemoteBatch
from llmq.workers.providers.batch_formats import BatchLine, LineResult
from llmq.workers.providers.errors import ProviderError
from llmq.workers.providers.json_output import check_json_output, wants_json

logger = structlog.get_logger(__name__)
T = TypeVar("T")
_CALL_TIMEOUT_S = 300.0


def run_provider_batches(rt: WorkerRuntime) -> dict[str, int]:
    """One run of the three steps; what each did, for logs and tests."""
    if not rt.providers.provider_batches.enabled:
        return {}
    counts = {"gathered": gather_due(rt), "sent": send_pending(rt)}
    counts["ended"] = poll_due(rt)
    if any(counts.values()):
        logger.info("provider_batches_run", **counts)
    return counts


def _call(rt: WorkerRuntime, coro: Coroutine[Any, Any, T]) -> T:
    return rt.run(coro, timeout=_CALL_TIMEOUT_S)


def _api(rt: WorkerRuntime, provider: str) -> BatchApi:
    api = rt.registry.batch_api(provider)
    if api is None:
        raise LookupError(f"provider {provider!r} has no batch API")
    return api


# --- 1. gather ----------------------------------------------------------------------------------


def gather_due(rt: WorkerRuntime) -> int:
    """Gather the waiting jobs of every model that is due; the number of batches made."""
    config = rt.providers.provider_batches
    now = utcnow()
    made = 0
    with rt.db.session() as session:
        waiting = waiting_models(session)
    for model, count, since in waiting:
        provider = model.split("/", 1)[0]
        if not config.covers(provider):
            continue
        if count < config.min_jobs and (now - since).total_seconds() < config.max_wait_s:
            continue
        while count > 0:
            with rt.db.transaction() as session:
                batch = gather(
                    session,
                    provider=provider,
                    model=model,
                    limit=config.max_jobs,
                    lease_s=config.lease_s,
                    now=now,
                )
            if batch is None:
                break
            made += 1
            count -= batch.job_count
            logger.info("provider_batch_gathered", batch_id=batch.id, model=model, jobs=batch.job_count)
    return made


# --- 2. send ------------------------------------------------------------------------------------


def send_pending(rt: WorkerRuntime) -> int:
    """Send every gathered batch, and resume those whose sender died; the number submitted."""
    config = rt.providers.provider_batches
    now = utcnow()
    sent = 0
    with rt.db.session() as session:
        gathered = batches_in(session, BatchState.GATHERED)
        stale = batches_in(session, BatchState.SENDING)
    for batch in gathered:
        with rt.db.transaction() as session:
            mine = move(session, batch.id, BatchState.GATHERED, state=BatchState.SENDING, updated_at=now)
        if mine:
            sent += _guarded(send_batch, rt, batch)
    stale_before = now - timedelta(seconds=config.step_timeout_s)
    for batch in stale:
        if batch.updated_at >= stale_before:
            continue
        with rt.db.transaction() as session:
            mine = take_over_stale(session, batch.id, BatchState.SENDING, stale_before=stale_before, now=now)
        if mine:
            sent += _guarded(resume_batch, rt, batch)
    return sent


def _guarded(
    step: Callable[[WorkerRuntime, ProviderBatch], int], rt: WorkerRuntime, batch: ProviderBatch
) -> int:
    """One batch's step; an error is logged and leaves the batch where it is (a half-sent one
    is resumed after ``step_timeout_s``, a submitted one polled again), the others go on."""
    try:
        return step(rt, batch)
    except Exception as exc:
        logger.error(
            "provider_batch_step_failed", batch_id=batch.id, state=batch.state, error=type(exc).__name__
        )
        return 0


def _lines(rt: WorkerRuntime, claims: list[ClaimedJob]) -> list[BatchLine]:
    now = utcnow()
    return [BatchLine(c.job_id, request_for(rt, c, c.model.split("/", 1)[1], now)) for c in claims]


def send_batch(rt: WorkerRuntime, batch: ProviderBatch) -> int:
    """Send a batch this run moved to ``sending``: 1 when it is submitted."""
    api = _api(rt, batch.provider)
    with rt.db.session() as session:
        claims = held_jobs(session, batch)
    if not claims:
        _abandon(rt, batch, "no job of the batch is still waiting for it")
        return 0
    claims, over_budget = reserve_lines(rt, batch, claims)
    if over_budget:
        _hand_back(
            rt, over_budget, "budget", "its budget has no room for its worst case: the normal path decides"
        )
    if not claims:
        _abandon(rt, batch, "no line of the batch fits its budget")
        return 0
    lines = _lines(rt, claims)
    try:
        file_id = batch.input_file_id or _call(rt, api.upload(lines))
        if file_id is not None and batch.input_file_id is None:
            with rt.db.transaction() as session:  # recorded before the batch relies on it
                move(session, batch.id, BatchState.SENDING, input_file_id=file_id, updated_at=utcnow())
            batch.input_file_id = file_id
        remote = _call(rt, api.create(lines, file_id, batch.id))
    except BatchRefused as exc:
        _abandon(rt, batch, str(exc))
        return 0
    # Any other error leaves it unknown whether the provider took the batch: it stays "sending",
    # and is resumed (or handed back) once step_timeout_s has passed.
    return _submitted(rt, batch, remote)


def resume_batch(rt: WorkerRuntime, batch: ProviderBatch) -> int:
    """A batch whose sender died mid-way: adopt the remote batch if the provider shows it, send
    it if it surely was not sent, else give its jobs back to the normal path."""
    api = _api(rt, batch.provider)
    if not api.can_find:
        _abandon(rt, batch, "its sender stopped while sending it; the provider cannot say whether it has it")
        return 0
    found = _call(rt, api.find(batch.id))
    if found is not None:
        logger.info("provider_batch_adopted", batch_id=batch.id, remote_id=found.remote_id)
        return _submitted(rt, batch, found)
    return send_batch(rt, batch)


def _submitted(rt: WorkerRuntime, batch: ProviderBatch, remote: RemoteBatch) -> int:
    now = utcnow()
    poll = timedelta(seconds=rt.providers.provider_batches.poll_interval_s)
    with rt.db.transaction() as session:
        applied = move(
            session,
            batch.id,
            BatchState.SENDING,
            state=BatchState.SUBMITTED,
            remote_id=remote.remote_id,
            remote_status=remote.status,
            expires_at=remote.expires_at,
            submitted_at=now,
            next_poll_at=now + poll,
            updated_at=now,
        )
    logger.info("provider_batch_submitted", batch_id=batch.id, remote_id=remote.remote_id, recorded=applied)
    return int(applied)


def _hand_back(rt: WorkerRuntime, claims: list[ClaimedJob], error_type: str, why: str) -> None:
    """These jobs leave the batch before it is sent, for the normal path."""
    now = utcnow()
    with rt.db.transaction() as session:
        back = [c.job_id for c in claims if give_back(session, c, now, error_type=error_type, message=why)]
    for job_id in back:
        enqueue_job(job_id)


def _abandon(rt: WorkerRuntime, batch: ProviderBatch, why: str) -> None:
    """The batch will not run (or will never be read): its jobs go back to the normal path."""
    now = utcnow()
    with rt.db.transaction() as session:
        claims = held_jobs(session, batch)
        back = [
            c.job_id for c in claims if give_back(session, c, now, error_type="batch_not_sent", message=why)
        ]
        move(
            session,
            batch.id,
            [BatchState.GATHERED, BatchState.SENDING],
            state=BatchState.ABANDONED,
            error=why[:2000],
            ended_at=now,
            updated_at=now,
        )
    settle_lines(rt, batch, {}, given_back=[c.job_id for c in claims])  # before the normal path reserves
    for job_id in back:
        enqueue_job(job_id)
    logger.warning("provider_batch_abandoned", batch_id=batch.id, jobs=len(back), reason=why)


# --- 3. poll ------------------------------------------------------------------------------------


def poll_due(rt: WorkerRuntime) -> int:
    """Poll every submitted batch that is due; the number that ended (results written)."""
    now = utcnow()
    ended = 0
    with rt.db.session() as session:
        due = batches_in(session, BatchState.SUBMITTED, due_by=now)
    for batch in due:
        ended += _guarded(poll_batch, rt, batch)
    return ended


def poll_batch(rt: WorkerRuntime, batch: ProviderBatch) -> int:
    """Poll one submitted batch; 1 when it has ended and its results are written."""
    config = rt.providers.provider_batches
    now = utcnow()
    assert batch.remote_id is not None
    api = _api(rt, batch.provider)
    remote = _call(rt, api.retrieve(batch.remote_id))  # failing: polled again at the next run
    if not remote.ended:  # an ended batch's holds are settled below, not renewed
        renew_holds(rt, batch)
    with rt.db.transaction() as session:
        renew_batch_leases(session, batch, until=now + timedelta(seconds=config.lease_s), now=now)
        if not remote.ended:
            move(
                session,
                batch.id,
                BatchState.SUBMITTED,
                remote_status=remote.status,
                next_poll_at=now + timedelta(seconds=config.poll_interval_s),
                updated_at=now,
            )
    if not remote.ended:
        return 0
    write_results(rt, batch, _call(rt, api.results(remote)))
    with rt.db.transaction() as session:
        move(
            session,
            batch.id,
            BatchState.SUBMITTED,
            state=BatchState.ENDED,
            remote_status=remote.status,
            output_file_id=remote.output_file_id,
            error_file_id=remote.error_file_id,
            ended_at=utcnow(),
            updated_at=utcnow(),
        )
    logger.info("provider_batch_ended", batch_id=batch.id, remote_status=remote.status)
    return 1


def write_results(rt: WorkerRuntime, batch: ProviderBatch, results: list[LineResult]) -> dict[str, int]:
    """Write each line into its job, if the batch still holds it."""
    now = utcnow()
    with rt.db.session() as session:
        claims = held_jobs(session, batch)
    by_id = {r.custom_id: r for r in results}
    latency_ms = int((now - (batch.submitted_at or batch.created_at)).total_seconds() * 1000)
    completions: list[Completion] = []
    failed: list[tuple[ClaimedJob, ProviderError]] = []
    unfinished: list[tuple[ClaimedJob, str]] = []
    for claim in claims:
        line = by_id.get(claim.job_id)
        if line is None or line.unfinished is not None:
            unfinished.append((claim, line.unfinished if line is not None and line.unfinished else "missing"))
        elif line.response is not None:
            try:
                if wants_json(claim.request_options):
                    assert claim.request_options is not None
                    check_json_output(claim.request_options, line.response, f"{batch.provider} batch")
            except ProviderError as exc:  # an answer that misses the response_format: retried
                failed.append((claim, exc))
                continue
            completions.append(Completion(claim, _batch_result(rt, claim, line, latency_ms)))
        else:
            assert line.error is not None
            failed.append((claim, line.error))
    # The budgets first: what each line cost is settled before a retry by the normal path
    # reserves again. A line of a job the batch no longer holds was billed all the same.
    costs = {c.claim.job_id: c.result.cost_usd or Decimal(0) for c in completions}
    billed = {claim.job_id: _billed_at_batch_price(rt, claim, error) for claim, error in failed}
    costs.update({job_id: (b.cost_usd if b else None) or Decimal(0) for job_id, b in billed.items()})
    held_ids = {c.job_id for c in claims}
    for line in results:
        if line.custom_id not in held_ids and line.response is not None:
            usage = _tokens(line.response)
            costs[line.custom_id] = rt.prices.batch_cost(batch.model, *usage) or Decimal(0)
    settle_lines(rt, batch, costs, given_back=[claim.job_id for claim, _ in unfinished])
    events: list[str] = []
    if completions:
        with rt.db.transaction() as session:
            transitions = complete_jobs(session, completions, now)
        for transition in transitions:
            if transition.applied:
                observe.job_ended("completed", "provider_batch")
            events.extend(transition.event_ids)
    for claim, error in failed:
        events.extend(_record_failure(rt, claim, error, billed[claim.job_id], latency_ms))
    back = []
    with rt.db.transaction() as session:
        for claim, why in unfinished:
            message = f"its line in provider batch {batch.id} did not run ({why}): the normal path runs it"
            if give_back(session, claim, now, error_type="batch_expired", message=message):
                back.append(claim.job_id)
    for job_id in back:
        enqueue_job(job_id)
    for event_id in events:
        try_enqueue_webhook(event_id)
    return {"completed": len(completions), "failed_lines": len(failed), "handed_back": len(back)}


def _batch_result(rt: WorkerRuntime, claim: ClaimedJob, line: LineResult, latency_ms: int) -> CallResult:
    response = line.response
    assert response is not None
    usage = _tokens(response)
    cost = rt.prices.batch_cost(claim.model, *usage)
    standard = rt.prices.cost(claim.model, *usage)
    return CallResult(
        text=response.text,
        finish_reason=response.finish_reason,
        prompt_tokens=response.prompt_tokens,
        completion_tokens=response.completion_tokens,
        served_by=claim.model,
        cost_usd=cost,
        latency_ms=latency_ms,
        cached_tokens=response.cached_tokens,
        cache_write_tokens=response.cache_write_tokens,
        extra=result_extra(response) if claim.request_options is not None else None,
        via_batch=True,
        batch_saved_usd=None if cost is None or standard is None else standard - cost,
    )


def _tokens(usage: ProviderResponse | ProviderUsage) -> tuple[int, int, int, int]:
    return usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens


def _billed_at_batch_price(rt: WorkerRuntime, claim: ClaimedJob, error: ProviderError) -> Billed | None:
    """What a failed line billed (an answer that missed its schema), at the batch price."""
    if error.billed is None:
        return None
    tokens = _tokens(error.billed)
    return Billed(*tokens, rt.prices.batch_cost(claim.model, *tokens))


def _record_failure(
    rt: WorkerRuntime, claim: ClaimedJob, error: ProviderError, billed: Billed | None, latency_ms: int
) -> list[str]:
    """A line the provider answered with an error: a failed attempt, as the retry policy says
    (retried by the normal path, moved to a fallback, degraded, or failed)."""
    failure = CallFailure(
        error.error_type, str(error), error.status_code, None, latency_ms, error.retryable, billed
    )
    chain, _ = model_chain(rt, claim)
    step = after_failure(rt, claim, failure, error, chain)
    now = utcnow()
    delay: float | None = None
    with rt.db.transaction() as session:
        if step.kind in ("retry", "fallback"):
            delay = step.delay_s
            transition = fail_attempt(
                session,
                claim,
                step.failure,
                now,
                retry_at=now + timedelta(seconds=delay),
                wait_reason=step.wait_reason,
                enqueued=delay <= rt.settings.max_countdown_s,
                next_model=step.model,
            )
        elif step.kind == "degrade":
            degraded = CallResult(
                rt.settings.degraded_text, "degraded", 0, 0, None, Decimal(0), latency_ms, degraded=True
            )
            transition = complete_job(session, claim, degraded, now)
        else:
            transition = fail_attempt(session, claim, step.failure, now, retry_at=None)
    if transition.applied and step.kind == "fail":
        observe.job_ended("failed", step.failure.error_type)
    if transition.applied and delay is not None and delay <= rt.settings.max_countdown_s:
        enqueue_job(claim.job_id, countdown=delay or None)
    logger.info(
        "provider_batch_line_failed", job_id=claim.job_id, error_type=error.error_type, step=step.kind
    )
    return list(transition.event_ids)


@celery_app.task(name="llmq.provider_batches", ignore_result=True)
def provider_batches_task() -> dict[str, int]:
    rt = get_runtime()
    if not rt.providers.provider_batches.enabled:
        return {}
    lock = rt.redis.lock(PROVIDER_BATCH_LOCK, timeout=900)
    if not lock.acquire(blocking=False):
        return {}
    try:
        return run_provider_batches(rt)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass
