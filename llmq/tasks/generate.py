"""``llmq.generate(job_id)``: claim the job, pass the gate, start the call; a finisher records it.

Two short transactions and no session, lock or thread held across the provider call:

1. in the Celery task: claim (``queued → processing``) and the gate (``tasks/gate/``: route,
   cache, breakers, fleet-wide limits) — then either record the attempt and start the call on the
   process's event loop, answer from the cache, or park the job. The task returns as soon as the
   call has started, so its message is acked and its pool thread takes the next job: a call in
   flight costs a coroutine, not a thread. From here on the job's lease is what makes it safe: a
   worker that dies stops renewing it, and the sweeper gives the job to another worker.
2. when the call ends, a finisher thread (``WorkerRuntime.finishers``) gives back what the gate
   took and records it: a success is handed to the completion writer (``WorkerRuntime.completions``,
   on Postgres), which completes every call that ended meanwhile in one statement; a retry, a move
   to a fallback, a degraded answer or a failure (``tasks/policy.py``) the finisher records
   itself. Each is a compare-and-set on the lease token, so a cancelled or taken-over job discards
   a late answer. Then the first attempt of the job's webhook goes out on the event loop
   (``webhooks/sender.py``); retries go to the ``webhooks`` queue.

A process keeps at most ``LLMQ_WORKER_MAX_IN_FLIGHT`` calls started and not yet recorded; when it
is full, its pool threads wait before taking a job, and the broker keeps the rest.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from decimal import Decimal

import structlog
from celery import Task

from llmq.models.base import utcnow
from llmq.models.claim import claim_job, park_job, record_attempt
from llmq.models.db import is_database_outage, retry_on_database_outage
from llmq.models.finish import complete_job, complete_jobs, discard_attempt, fail_attempt, hand_back
from llmq.models.records import CallResult, ClaimedJob, Completion, TransitionResult
from llmq.models.recovery import expire_overdue
from llmq.models.refuse import refuse_job
from llmq.models.submit import job_exists
from llmq.tasks import observe, spans
from llmq.tasks.app import celery_app
from llmq.tasks.call import CallOutcome, StartedCall, outcome_of, start_call
from llmq.tasks.enqueue import SENT_AT_HEADER, enqueue_job, enqueue_webhook
from llmq.tasks.gate import CallEnd, Go, Hit, Park, Refuse, after_call, gate, model_chain
from llmq.tasks.policy import after_failure
from llmq.tasks.runtime import WorkerRuntime, get_runtime, use_completion_recorder
from llmq.tasks.webhooks import send_claimed
from llmq.workers.cache import CachedAnswer

logger = structlog.get_logger(__name__)


def execute_job(rt: WorkerRuntime, job_id: str, sent_at: float | None = None) -> str:
    """Claim a job and start its call, or park it, or answer it from the cache. Returns what
    happened, for logs and tests. ``sent_at``: when its message was sent (its queue-wait span)."""
    rt.capacity.take()
    started = False
    try:
        what = _claim_and_start(rt, job_id, sent_at)
        started = what == "started"
        return what
    finally:
        if not started:  # else the finisher gives the capacity back
            rt.capacity.give()


def _claim_and_start(rt: WorkerRuntime, job_id: str, sent_at: float | None = None) -> str:
    now = utcnow()
    with rt.db.transaction() as session:
        claim = claim_job(
            session,
            job_id,
            lease_token=secrets.token_hex(8),
            lease_s=rt.settings.lease_s,
            worker=rt.worker_name,
            now=now,
        )
        if claim is not None:
            rt.policies.get(claim.tenant_id, claim.api_key_id, session)  # read in this connection
            spans.bind_claim(claim)
            spans.queue_wait(claim, sent_at)
            decision = gate(rt, claim)
            if isinstance(decision, Park):
                enqueued = _by_countdown(rt, decision.delay_s)
                until = decision.until or now + timedelta(seconds=decision.delay_s)
                park_job(session, claim, now=now, until=until, reason=decision.reason, enqueued=enqueued)
            elif isinstance(decision, Hit):
                claim = record_attempt(
                    session, claim, model=decision.model, now=now, route_reason=decision.route_reason
                )
                transition = complete_job(
                    session, claim, _from_cache(decision.answer), now, send_now=rt.send_now
                )
            elif isinstance(decision, Refuse):  # not called: fails at once (over budget)
                transition = refuse_job(
                    session, claim, decision.error_type, decision.message, now, send_now=rt.send_now
                )
            else:
                claim = record_attempt(
                    session, claim, model=decision.model, now=now, route_reason=decision.route_reason
                )
    if claim is None:
        return _not_claimed(rt, job_id)
    if isinstance(decision, Park):
        if enqueued:
            enqueue_job(job_id, countdown=decision.delay_s)
        logger.info("job_parked", job_id=job_id, reason=decision.reason, wait_s=round(decision.delay_s, 3))
        return "parked"
    if isinstance(decision, Hit):
        _announce(rt, transition, claim)
        observe.job_ended("completed", "cache")
        logger.info("job_cache_hit", job_id=job_id)
        return "completed"
    if isinstance(decision, Refuse):
        _announce(rt, transition, claim)
        observe.job_ended("failed", "refused")
        logger.info("job_refused", job_id=job_id, error_type=decision.error_type)
        return "refused"
    logger.info("job_attempt_started", job_id=job_id, attempt=claim.attempt_number, model=claim.model)
    slot = (decision.model, decision.slot_holder) if decision.slot_holder is not None else None
    call = start_call(rt, claim, utcnow(), slot=slot)
    if isinstance(call, CallOutcome):  # could not start: record it here and now
        spans.attempt(claim, call)
        _release(rt, decision, call, sent=False)
        _record(rt, claim, decision, call)
        return "not_started"
    call.future.add_done_callback(lambda _: rt.finishers.submit(_finish, rt, claim, decision, call))
    return "started"


def _finish(rt: WorkerRuntime, claim: ClaimedJob, go: Go, call: StartedCall) -> str:
    """On a finisher thread, once the call has ended: give back what the gate took, then record
    the outcome and announce it — a success through the completion writer (in a batch with the
    others that ended meanwhile), anything else here. A failure here leaves the job to its lease
    (the sweeper recovers it)."""
    structlog.contextvars.bind_contextvars(job_id=claim.job_id)
    spans.bind_claim(claim)
    handed_over = False
    try:
        outcome = outcome_of(rt, claim, call)
        observe.call_ended(claim, outcome)
        spans.attempt(claim, outcome)
        _release(rt, go, outcome)
        if outcome.result is not None and rt.completions is not None:
            rt.completions.put((claim, go, outcome.result))
            handed_over = True
            return "handed_over"
        return _record(rt, claim, go, outcome)
    except Exception as exc:
        logger.error("job_finish_failed", error=type(exc).__name__, exc_info=exc)
        return "error"
    finally:
        if not handed_over:
            _forget(rt, claim)
        structlog.contextvars.unbind_contextvars("job_id", "request_id")


def _forget(rt: WorkerRuntime, claim: ClaimedJob) -> None:
    """The job is recorded (or left to its lease): stop renewing it and free its capacity."""
    rt.inflight.remove(claim.job_id)
    rt.progress.forget(claim.job_id)
    rt.capacity.give()


def record_completions(rt: WorkerRuntime, batch: list[tuple[ClaimedJob, Go, CallResult]]) -> None:
    """The completion writer's work: complete a batch of successful calls in one transaction,
    then announce each. While the database is unreachable the error is raised, and the writer
    keeps the batch and tries again (the jobs stay in flight, their leases renewed); any other
    error falls back to recording the calls one by one."""
    try:
        with rt.db.transaction() as session:
            completions = [Completion(claim, result) for claim, _, result in batch]
            ended = complete_jobs(session, completions, utcnow(), send_now=rt.send_now)
    except Exception as exc:
        if is_database_outage(exc):
            raise
        logger.error("completion_batch_failed", jobs=len(batch), error=type(exc).__name__, exc_info=exc)
        for claim, go, result in batch:
            _record_alone(rt, claim, go, result)
        return
    for (claim, go, result), transition in zip(batch, ended, strict=True):
        try:
            with spans.job_context(claim.job_id, claim.request_id):
                _completed(rt, claim, go, result, transition)
        except Exception as exc:
            logger.error("job_finish_failed", job_id=claim.job_id, error=type(exc).__name__, exc_info=exc)
        finally:
            _forget(rt, claim)


use_completion_recorder(record_completions)


def _record_alone(rt: WorkerRuntime, claim: ClaimedJob, go: Go, result: CallResult) -> None:
    try:
        with spans.job_context(claim.job_id, claim.request_id):
            _record(rt, claim, go, CallOutcome(result=result, latency_ms=result.latency_ms))
    except Exception as exc:
        logger.error("job_finish_failed", job_id=claim.job_id, error=type(exc).__name__, exc_info=exc)
    finally:
        _forget(rt, claim)


def _completed(
    rt: WorkerRuntime, claim: ClaimedJob, go: Go, result: CallResult, transition: TransitionResult
) -> None:
    if not transition.applied:
        logger.info("job_result_discarded", job_id=claim.job_id, attempt=claim.attempt_number)
        return
    _announce(rt, transition, claim)
    observe.job_ended("completed", "answered")
    if go.cache_key is not None:
        rt.cache.put(go.cache_key, _to_cache(result))
    logger.info(
        "job_attempt_finished", job_id=claim.job_id, outcome="completed", attempt=claim.attempt_number
    )


@retry_on_database_outage
def _record(rt: WorkerRuntime, claim: ClaimedJob, go: Go, outcome: CallOutcome) -> str:
    if outcome.interrupted:
        return _interrupted(rt, claim, outcome.latency_ms)
    done = utcnow()
    delay = None
    with rt.db.transaction() as session:
        if outcome.result is not None:
            transition = complete_job(session, claim, outcome.result, done, send_now=rt.send_now)
            what = "completed"
        else:
            assert outcome.failure is not None
            chain, _ = model_chain(rt, claim)
            step = after_failure(rt, claim, outcome.failure, outcome.error, chain)
            if step.kind in ("retry", "fallback"):
                delay = step.delay_s
                transition = fail_attempt(
                    session,
                    claim,
                    step.failure,
                    done,
                    retry_at=done + timedelta(seconds=delay),
                    wait_reason=step.wait_reason,
                    enqueued=_by_countdown(rt, delay),
                    next_model=step.model,
                )
            elif step.kind == "degrade":
                transition = complete_job(session, claim, _degraded(rt, outcome), done, send_now=rt.send_now)
            else:
                transition = fail_attempt(
                    session, claim, step.failure, done, retry_at=None, send_now=rt.send_now
                )
            what = step.kind
    if not transition.applied:
        logger.info("job_result_discarded", attempt=claim.attempt_number)
        return "discarded"
    if outcome.result is not None:
        _completed(rt, claim, go, outcome.result, transition)
        return what
    _announce(rt, transition, claim)
    observe.step_recorded(what, outcome)
    if delay is not None and _by_countdown(rt, delay):
        enqueue_job(claim.job_id, countdown=delay or None)
    # Longer waits stay parked in the database; the sweeper enqueues them when due.
    logger.info("job_attempt_finished", outcome=what, attempt=claim.attempt_number, retry_in_s=delay)
    return what


def _release(rt: WorkerRuntime, go: Go, outcome: CallOutcome, *, sent: bool = True) -> None:
    """Give the gate back what it took; ``sent`` False: the call never reached the provider."""
    transient = None
    if not outcome.interrupted:
        transient = outcome.failure is not None and outcome.failure.retryable
    tokens = cost = None
    if outcome.result is not None:
        tokens = outcome.result.prompt_tokens + outcome.result.completion_tokens
        cost = outcome.result.cost_usd
    elif outcome.failure is not None and outcome.failure.billed is not None:  # a billed failure
        billed = outcome.failure.billed
        tokens = billed.prompt_tokens + billed.completion_tokens
        cost = billed.cost_usd
    after_call(rt, go, CallEnd(sent=sent, transient_failure=transient, total_tokens=tokens, cost_usd=cost))


def _announce(rt: WorkerRuntime, transition: TransitionResult, claim: ClaimedJob | None = None) -> None:
    """Send the webhooks of a job that just ended: events this worker claimed in the same
    transaction go out from here, on the event loop; any other goes to the webhooks queue."""
    for event in transition.events:
        send_claimed(rt, spans.for_job(event, claim))
    for event_id in transition.event_ids:
        enqueue_webhook(event_id)


def _not_claimed(rt: WorkerRuntime, job_id: str) -> str:
    """Not claimable: maybe its deadline passed while it waited; else a duplicate or ended job."""
    with rt.db.transaction() as session:
        expired = expire_overdue(session, job_id, utcnow(), send_now=rt.send_now)
        known = expired.applied or job_exists(session, job_id)
    if expired.applied:
        _announce(rt, expired)
        observe.job_ended("failed", "deadline")
        logger.info("job_deadline_passed", job_id=job_id)
        return "failed"
    if not known:
        # A message for a job this database never had: another llmq installation (another
        # DATABASE_URL) shares this Redis database. Its own sweeper sends the job again.
        logger.warning(
            "job_unknown",
            job_id=job_id,
            hint="another llmq installation with another database uses this REDIS_URL; "
            "give each installation its own Redis database",
        )
        return "unknown"
    logger.info("job_claim_skipped", job_id=job_id)
    return "skipped"


def _from_cache(answer: CachedAnswer) -> CallResult:
    return CallResult(
        text=answer.text,
        finish_reason=answer.finish_reason or "stop",
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        served_by=answer.served_by,
        cost_usd=Decimal(0),  # a cache hit costs nothing
        latency_ms=0,
        cached=True,
        http_status=None,
        extra=answer.extra,
    )


def _to_cache(result: CallResult) -> CachedAnswer:
    return CachedAnswer(
        text=result.text,
        finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        served_by=result.served_by or "",
        extra=result.extra,
    )


def _degraded(rt: WorkerRuntime, outcome: CallOutcome) -> CallResult:
    return CallResult(
        text=rt.settings.degraded_text,
        finish_reason="degraded",
        prompt_tokens=0,
        completion_tokens=0,
        served_by=None,
        cost_usd=Decimal(0),
        latency_ms=outcome.latency_ms,
        degraded=True,
        http_status=outcome.failure.http_status if outcome.failure else None,
    )


def _interrupted(rt: WorkerRuntime, claim: ClaimedJob, latency_ms: int) -> str:
    """The call was stopped: hand the job back if we are shutting down, else it was cancelled or
    taken over and the attempt is only recorded as discarded."""
    now = utcnow()
    with rt.db.transaction() as session:
        if rt.inflight.shutting_down:
            handed_back = hand_back(session, claim, now)
        else:
            discard_attempt(session, claim, now, latency_ms)
            handed_back = False
    if handed_back:
        enqueue_job(claim.job_id)
        logger.info("job_handed_back", attempt=claim.attempt_number)
        return "handed_back"
    logger.info("job_call_stopped", attempt=claim.attempt_number)
    return "discarded"


def _by_countdown(rt: WorkerRuntime, delay_s: float | None) -> bool:
    """Short waits ride a broker countdown; long ones park in the database (a Celery ETA longer
    than the visibility timeout would be redelivered over and over on Redis)."""
    return delay_s is not None and delay_s <= rt.settings.max_countdown_s


@celery_app.task(
    name="llmq.generate",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def generate(self: Task, job_id: str) -> str:
    with spans.job_context(job_id, spans.header(self.request, spans.REQUEST_ID_HEADER)):
        return execute_job(get_runtime(), job_id, sent_at=spans.header(self.request, SENT_AT_HEADER))
