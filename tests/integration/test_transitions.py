"""Compare-and-set transitions on the real Postgres, where a reading of the code found them weak:
an attempt that has ended keeps its outcome whatever arrives late, a webhook event only moves for
the attempt it waits on, and the sweeper counts the leases it recovered, not the rows it found."""

from __future__ import annotations

import secrets
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import redis
from sqlalchemy import select, update

from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.claim import claim_job, record_attempt
from llmq.models.db import Database
from llmq.models.finish import complete_job, complete_jobs, fail_attempt
from llmq.models.outbox import SUPERSEDED, DeliveryRecord, claim_event, record_deliveries
from llmq.models.records import CallFailure, CallResult, ClaimedJob, Completion, NewJob
from llmq.models.recovery import recover_expired_lease
from llmq.models.submit import create_job
from llmq.models.tables import Attempt, Job, WebhookDelivery, WebhookEvent
from llmq.models.tenants import IssuedKey
from llmq.tasks.app import configure_celery
from llmq.tasks.sweep import sweep

MODEL = "openai/transitions"  # no simulator script, no worker picks these jobs before the test ends


def _running(database: Database, tenant: IssuedKey, webhook_url: str | None = None) -> ClaimedJob:
    now = utcnow()
    new = NewJob(model=MODEL, messages=[{"role": "user", "content": "hi"}], webhook_url=webhook_url)
    with database.transaction() as session:
        job, _ = create_job(session, tenant_id=tenant.tenant_id, new=new, now=now, max_attempts=5)
        claim = claim_job(session, job.id, lease_token=secrets.token_hex(8), lease_s=600, worker="w", now=now)
        assert claim is not None
        return record_attempt(session, claim, model=MODEL, now=now)


def _answer() -> CallResult:
    return CallResult(
        text="late",
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        served_by=MODEL,
        cost_usd=None,
        latency_ms=9,
    )


def _attempt(database: Database, claim: ClaimedJob) -> Attempt:
    with database.session() as session:
        attempt = session.scalars(
            select(Attempt).where(Attempt.job_id == claim.job_id, Attempt.number == claim.attempt_number)
        ).one()
        session.expunge(attempt)
        return attempt


def _lose(database: Database, claim: ClaimedJob) -> None:
    """What the sweeper does to a job whose lease expired: its attempt is recorded as lost."""
    with database.transaction() as session:
        recovered = recover_expired_lease(
            session,
            job_id=claim.job_id,
            lease_token=claim.lease_token,
            attempts=claim.attempt_number,
            max_attempts=5,
            now=utcnow(),
        )
    assert recovered.applied


def test_a_late_answer_does_not_rewrite_a_lost_attempt(database: Database, tenant: IssuedKey) -> None:
    alone, batched, failed = (_running(database, tenant) for _ in range(3))
    for claim in (alone, batched, failed):
        _lose(database, claim)
    with database.transaction() as session:
        assert not complete_job(session, alone, _answer(), utcnow()).applied
        assert [t.applied for t in complete_jobs(session, [Completion(batched, _answer())], utcnow())] == [
            False
        ]
        failure = CallFailure("timeout", "late", None, None, 5, True)
        assert not fail_attempt(session, failed, failure, utcnow(), retry_at=None).applied
    for claim in (alone, batched, failed):
        attempt = _attempt(database, claim)
        assert (attempt.outcome, attempt.error_type) == ("lost", "worker_lost"), claim.job_id


def test_a_completion_batch_written_again_keeps_its_successful_attempts(
    database: Database, tenant: IssuedKey
) -> None:
    """A commit that succeeded although the worker saw an error (an outage mid-commit) is tried
    again: the jobs are not held any more, and their attempts must stay ``success``."""
    claims = [_running(database, tenant) for _ in range(2)]
    batch = [Completion(claim, _answer()) for claim in claims]
    with database.transaction() as session:
        assert [t.applied for t in complete_jobs(session, batch, utcnow())] == [True, True]
    with database.transaction() as session:
        assert [t.applied for t in complete_jobs(session, batch, utcnow())] == [False, False]
        assert not complete_job(session, claims[0], _answer(), utcnow()).applied
    assert [_attempt(database, claim).outcome for claim in claims] == ["success", "success"]


def _event_of(database: Database, tenant: IssuedKey) -> str:
    claim = _running(database, tenant, webhook_url="http://127.0.0.1:9/hook")
    with database.transaction() as session:
        assert complete_job(session, claim, _answer(), utcnow()).applied
        return session.scalars(select(WebhookEvent.id).where(WebhookEvent.job_id == claim.job_id)).one()


def _record(database: Database, records: list[DeliveryRecord]) -> list[str]:
    with database.transaction() as session:
        return record_deliveries(session, records)


def test_a_late_record_of_an_older_attempt_does_not_move_the_event(
    database: Database, tenant: IssuedKey
) -> None:
    """Attempt 1 is slow, attempt 2 (claimed when attempt 1's hold ran out) delivers; then attempt
    1's timeout is recorded. The event stays delivered: it must not be made pending again (that
    would send it once more), alone or in a batch."""
    single, batched = _event_of(database, tenant), _event_of(database, tenant)
    sends: dict[str, list[Any]] = {}
    for event_id in (single, batched):
        with database.transaction() as session:
            first = claim_event(session, event_id, now=utcnow(), hold_s=0.0)
            second = claim_event(session, event_id, now=utcnow(), hold_s=30.0)
        assert first is not None and second is not None and (first.attempt, second.attempt) == (1, 2)
        sends[event_id] = [first, second]
    now = utcnow()

    def delivered(event: Any) -> DeliveryRecord:
        return DeliveryRecord(
            event, now, status_code=204, latency_ms=3, error=None, success=True, next_attempt_at=None
        )

    def timed_out(event: Any) -> DeliveryRecord:
        retry = now + timedelta(seconds=5)
        return DeliveryRecord(
            event,
            now,
            status_code=None,
            latency_ms=10_000,
            error="timeout",
            success=False,
            next_attempt_at=retry,
        )

    assert _record(database, [delivered(sends[single][1])]) == ["delivered"]
    assert _record(database, [timed_out(sends[single][0])]) == [SUPERSEDED]
    assert _record(database, [delivered(sends[batched][1]), timed_out(sends[single][0])]) == [
        "delivered",
        SUPERSEDED,
    ]
    assert _record(database, [timed_out(sends[batched][0]), timed_out(sends[single][0])]) == [
        SUPERSEDED,
        SUPERSEDED,
    ]
    with database.session() as session:
        events = session.execute(
            select(WebhookEvent.id, WebhookEvent.status, WebhookEvent.next_attempt_at).where(
                WebhookEvent.id.in_([single, batched])
            )
        ).all()
        recorded = session.scalar(
            select(WebhookDelivery.id).where(WebhookDelivery.event_id == single).order_by(WebhookDelivery.id)
        )
    assert {(e.status, e.next_attempt_at) for e in events} == {("delivered", None)}
    assert recorded is not None, "every attempt is recorded all the same"


def test_the_sweeper_counts_the_leases_it_recovered(
    database: Database, tenant: IssuedKey, settings: Settings
) -> None:
    recoverable = _running(database, tenant)
    unrecoverable = _running(database, tenant)
    past = utcnow() - timedelta(seconds=60)
    with database.transaction() as session:
        session.execute(update(Job).where(Job.id == recoverable.job_id).values(lease_expires_at=past))
        # a row the sweeper finds but cannot recover: no lease token to compare and set on
        session.execute(
            update(Job).where(Job.id == unrecoverable.job_id).values(lease_expires_at=past, lease_token=None)
        )
    configure_celery(settings)  # what the sweep sends goes to the suite's broker
    broker = redis.Redis.from_url(settings.broker_url)
    try:
        counts = sweep(SimpleNamespace(settings=settings, db=database, redis=broker))  # type: ignore[arg-type]
    finally:
        broker.close()
    assert counts["leases_recovered"] == 1
    assert _attempt(database, recoverable).outcome == "lost"
    assert _attempt(database, unrecoverable).outcome == "running"
