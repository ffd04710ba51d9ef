"""Durability features on the real worker: the outbox sweeper, expired leases, cancellation that
stops the provider call, per-job deadlines, webhook delivery listing and redelivery."""

from __future__ import annotations

import json
import secrets
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from llmq.models.base import utcnow
from llmq.models.claim import claim_job, park_job, record_attempt
from llmq.models.db import Database
from llmq.models.finish import complete_jobs
from llmq.models.outbox import DeliveryRecord, EventToSend, record_deliveries
from llmq.models.records import CallResult, ClaimedJob, Completion, NewJob, SendNow
from llmq.models.state import AttemptOutcome
from llmq.models.submit import create_job
from llmq.models.tables import Attempt, Job, WebhookDelivery, WebhookEvent, job_public
from llmq.models.tenants import IssuedKey
from llmq.webhooks import verify
from tests.integration.conftest import SimulatorControl, settle, unique_model, wait_for_status
from tests.integration.services import WebhookReceiver, wait_for

pytestmark = pytest.mark.usefixtures("worker")


def _attempts(database: Database, job_id: str) -> list[Attempt]:
    with database.session() as session:
        return list(session.query(Attempt).filter_by(job_id=job_id).order_by(Attempt.number))


def test_a_job_the_broker_never_received_is_enqueued_by_the_sweeper(
    client: FlaskClient, auth: dict[str, str], tenant: IssuedKey, database: Database, sim: SimulatorControl
) -> None:
    bare = unique_model("outbox")
    new = NewJob(model=f"openai/{bare}", messages=[{"role": "user", "content": "hi"}])
    with database.transaction() as session:
        job, _ = create_job(session, tenant_id=tenant.tenant_id, new=new, now=utcnow(), max_attempts=5)
        job_id = job.id
        # committed but never on the broker, as when Redis was down at submit
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=None))
    done = wait_for_status(client, auth, job_id, {"completed"})
    assert done["attempts"] == 1
    assert sim.requests_for(bare) == 1


def test_an_expired_lease_puts_the_job_back_and_a_late_answer_is_discarded(
    client: FlaskClient, auth: dict[str, str], database: Database, sim: SimulatorControl
) -> None:
    """A worker that stops renewing (here: its lease token is taken over in the database, as
    after a SIGKILL) loses the job; the sweeper requeues it and the next attempt completes."""
    bare = unique_model("lease")
    sim.script(bare, [{"fault": "ok", "latency": 4}])
    job = client.post("/v1/jobs", json={"prompt": "hi", "model": f"openai/{bare}"}, headers=auth).get_json()
    wait_for_status(client, auth, job["id"], {"processing"})
    with database.transaction() as session:  # simulate a dead worker: foreign token, lease expired
        session.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(lease_token=secrets.token_hex(8), lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    done = wait_for_status(client, auth, job["id"], {"completed", "failed"}, timeout=30)
    assert done["status"] == "completed"
    attempts = _attempts(database, job["id"])
    assert [a.outcome for a in attempts][-1] == "success"
    assert attempts[0].outcome in {"lost", "discarded"}
    assert len([a for a in attempts if a.outcome == "success"]) == 1


def test_cancel_stops_the_provider_call_at_once(
    client: FlaskClient, auth: dict[str, str], database: Database, sim: SimulatorControl
) -> None:
    bare = unique_model("longcall")
    sim.script(bare, [{"fault": "ok", "latency": 60}])
    job = client.post("/v1/jobs", json={"prompt": "hi", "model": f"openai/{bare}"}, headers=auth).get_json()
    wait_for(lambda: sim.stats()["in_flight_by_model"].get(bare), what="the call to reach the provider")
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).get_json()["status"] == "cancelled"
    # The worker stops waiting: the connection to the provider is closed long before its 60 s.
    wait_for(lambda: not sim.stats()["in_flight_by_model"].get(bare), timeout=15, what="the call to stop")
    attempt = wait_for(
        lambda: (a := _attempts(database, job["id"])[0]).ended_at and a, what="the attempt to end"
    )
    assert attempt.outcome == "discarded"
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).get_json()["status"] == "cancelled"


def test_job_deadline_cuts_a_hung_call_and_fails_with_timeout(
    client: FlaskClient, auth: dict[str, str], sim: SimulatorControl
) -> None:
    bare = unique_model("deadline")
    sim.script(bare, [], default={"fault": "hang", "seconds": 60})
    job = client.post(
        "/v1/jobs", json={"prompt": "hi", "model": f"openai/{bare}", "timeout_s": 1.5}, headers=auth
    ).get_json()
    done = wait_for_status(client, auth, job["id"], {"completed", "failed"}, timeout=30)
    assert done["status"] == "failed"
    assert done["error"]["type"] == "timeout"


def test_a_retry_that_would_land_after_the_deadline_fails_the_job_now(
    client: FlaskClient, auth: dict[str, str], sim: SimulatorControl
) -> None:
    bare = unique_model("late-retry")
    sim.script(bare, [{"fault": "429", "retry_after": 120}])
    job = client.post(
        "/v1/jobs", json={"prompt": "hi", "model": f"openai/{bare}", "timeout_s": 30}, headers=auth
    ).get_json()
    done = wait_for_status(client, auth, job["id"], {"completed", "failed"})
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["error"]["type"] == "timeout"
    assert "rate" in done["error"]["message"].lower() or "429" in done["error"]["message"]


def test_timeout_above_the_maximum_is_refused(
    client: FlaskClient, auth: dict[str, str], settings: Any
) -> None:
    response = client.post(
        "/v1/jobs", json={"prompt": "hi", "timeout_s": settings.job_timeout_max_s + 1}, headers=auth
    )
    assert response.status_code == 422


def test_webhook_deliveries_are_listed_and_can_be_redelivered_with_the_same_id(
    client: FlaskClient, auth: dict[str, str], tenant: IssuedKey, webhook_receiver: WebhookReceiver
) -> None:
    path = f"/hook/{unique_model('redeliver')}"
    job = client.post(
        "/v1/jobs", json={"prompt": "hi", "webhook_url": webhook_receiver.url(path)}, headers=auth
    ).get_json()
    wait_for_status(client, auth, job["id"], {"completed"})
    wait_for(lambda: webhook_receiver.for_path(path), what="the first delivery")
    listed = wait_for(
        lambda: (
            (d := client.get(f"/v1/jobs/{job['id']}/webhooks", headers=auth).get_json()["data"])
            and d[0]["status"] == "delivered"
            and d
        ),
        what="the delivery to be recorded",
    )
    assert listed[0]["type"] == "job.completed"
    assert [(d["attempt"], d["status_code"], d["success"]) for d in listed[0]["deliveries"]] == [
        (1, 204, True)
    ]
    assert listed[0]["deliveries"][0]["latency_ms"] is not None

    response = client.post(f"/v1/jobs/{job['id']}/webhooks/redeliver", headers=auth)
    assert response.status_code == 202
    hooks = wait_for(lambda: len(h := webhook_receiver.for_path(path)) >= 2 and h, what="the redelivery")
    assert hooks[0].headers["webhook-id"] == hooks[1].headers["webhook-id"] == listed[0]["id"]
    assert hooks[0].body == hooks[1].body
    verify(tenant.webhook_secret, hooks[1].body, hooks[1].headers)


def test_redeliver_without_an_event_is_409(client: FlaskClient, auth: dict[str, str]) -> None:
    job = client.post("/v1/jobs", json={"prompt": "hi"}, headers=auth).get_json()
    wait_for_status(client, auth, job["id"], {"completed"})
    response = client.post(f"/v1/jobs/{job['id']}/webhooks/redeliver", headers=auth)
    assert response.status_code == 409


def test_410_gone_stops_the_retries(
    client: FlaskClient, auth: dict[str, str], webhook_receiver: WebhookReceiver
) -> None:
    path = f"/hook/{unique_model('gone')}"
    webhook_receiver.fail_next(path, 5, status=410)
    job = client.post(
        "/v1/jobs", json={"prompt": "hi", "webhook_url": webhook_receiver.url(path)}, headers=auth
    ).get_json()
    wait_for(lambda: webhook_receiver.for_path(path), what="the delivery")
    settle(3.0)  # the compressed schedule would have retried by now
    assert len(webhook_receiver.for_path(path)) == 1
    events = client.get(f"/v1/jobs/{job['id']}/webhooks", headers=auth).get_json()["data"]
    assert events[0]["status"] == "stopped"


def test_a_redirect_is_a_failure_and_is_not_followed(
    client: FlaskClient, auth: dict[str, str], webhook_receiver: WebhookReceiver
) -> None:
    path = f"/hook/{unique_model('redirect')}"
    webhook_receiver.fail_next(path, 1, status=302)
    job = client.post(
        "/v1/jobs", json={"prompt": "hi", "webhook_url": webhook_receiver.url(path)}, headers=auth
    ).get_json()
    wait_for(lambda: len(webhook_receiver.for_path(path)) >= 2, what="the retry after the 302")
    events = wait_for(
        lambda: (
            (e := client.get(f"/v1/jobs/{job['id']}/webhooks", headers=auth).get_json()["data"])[0]["status"]
            == "delivered"
            and e
        )
    )
    assert [d["status_code"] for d in events[0]["deliveries"]] == [302, 204]


def test_private_webhook_urls_are_refused_when_the_guard_is_on(
    settings: Any, tenant: IssuedKey, database: Database
) -> None:
    from llmq.api.app import create_app

    guarded = settings.model_copy(update={"webhook_allow_private": False})
    app = create_app(guarded)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {tenant.api_key}"}
    try:
        for url in (
            "http://127.0.0.1:9000/hook",
            "http://localhost/hook",
            "http://10.1.2.3/hook",
            "http://192.168.1.1/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/hook",
            "http://[::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://224.0.0.1/hook",
            "http://0.0.0.0/hook",
        ):
            response = client.post("/v1/jobs", json={"prompt": "hi", "webhook_url": url}, headers=headers)
            assert response.status_code == 422, url
            assert "refused" in response.get_json()["error"]["message"]
        accepted = client.post(
            "/v1/jobs", json={"prompt": "hi", "webhook_url": "https://93.184.215.14/hook"}, headers=headers
        )
        assert accepted.status_code == 202
    finally:
        app.extensions["llmq.db"].dispose()


def test_a_batch_of_delivery_attempts_is_recorded_in_one_go(tenant: IssuedKey, database: Database) -> None:
    """The LLM worker records its first webhook attempts in batches (one statement per table on
    Postgres): each event gets its row and its new state, whatever else is in the batch."""
    now = utcnow()
    new = NewJob(model="openai/batch", messages=[{"role": "user", "content": "hi"}], webhook_url="http://x/h")
    events = []
    with database.transaction() as session:
        for n in range(3):
            job, _ = create_job(session, tenant_id=tenant.tenant_id, new=new, now=now, max_attempts=5)
            # an ended job (no worker may pick it up), whose event is being delivered
            session.execute(update(Job).where(Job.id == job.id).values(status="completed", completed_at=now))
            event = WebhookEvent(
                id=f"msg_batch{n}{secrets.token_hex(4)}",
                job_id=job.id,
                tenant_id=tenant.tenant_id,
                type="job.completed",
                url="http://x/h",
                payload="{}",
                status="pending",
                attempts=1,
                next_attempt_at=now,
            )
            session.add(event)
            events.append(EventToSend(event.id, event.url, event.payload, "secret", attempt=1))
    later = now + timedelta(seconds=5)
    records = [
        DeliveryRecord(events[0], now, 200, 12, None, success=True, next_attempt_at=None),
        DeliveryRecord(events[1], now, 503, 30, "HTTP 503", success=False, next_attempt_at=later),
        DeliveryRecord(events[2], now, 410, 8, "HTTP 410", success=False, next_attempt_at=None, stop=True),
    ]
    with database.transaction() as session:
        statuses = record_deliveries(session, records)
    assert statuses == ["delivered", "pending", "stopped"]
    with database.session() as session:
        stored = {
            e.id: e
            for e in session.query(WebhookEvent).filter(WebhookEvent.id.in_([e.event_id for e in events]))
        }
        rows = {
            d.event_id: d for d in session.query(WebhookDelivery).filter(WebhookDelivery.event_id.in_(stored))
        }
    assert [stored[e.event_id].status for e in events] == statuses
    assert stored[events[0].event_id].delivered_at == now
    assert stored[events[1].event_id].next_attempt_at == later
    assert stored[events[2].event_id].next_attempt_at is None
    assert [rows[e.event_id].status_code for e in events] == [200, 503, 410]
    assert [rows[e.event_id].success for e in events] == [True, False, False]
    assert rows[events[1].event_id].error == "HTTP 503"


def test_a_batch_of_completions_is_recorded_in_one_go(tenant: IssuedKey, database: Database) -> None:
    """The LLM worker completes the calls that ended meanwhile in one transaction (two statements
    on Postgres): each job still held is completed, its attempt closed and its webhook event
    claimed for the worker to send; a job whose lease was taken over is left alone and its attempt
    recorded as discarded, whatever else is in the batch."""
    now = utcnow()
    with_hook = NewJob(
        model="openai/batch", messages=[{"role": "user", "content": "hi"}], webhook_url="http://x/h"
    )
    without_hook = NewJob(model="openai/batch", messages=[{"role": "user", "content": "hi"}])
    claims: list[ClaimedJob] = []
    with database.transaction() as session:
        for new in (with_hook, with_hook, without_hook):
            job, _ = create_job(session, tenant_id=tenant.tenant_id, new=new, now=now, max_attempts=5)
            claim = claim_job(
                session, job.id, lease_token=secrets.token_hex(8), lease_s=600, worker="w", now=now
            )
            assert claim is not None
            route = "rerouted for the test" if not claims else None  # carried into the payload
            claims.append(record_attempt(session, claim, model="openai/batch", now=now, route_reason=route))
        # the second job's lease was taken over: its answer must be discarded
        session.execute(update(Job).where(Job.id == claims[1].job_id).values(lease_token="someone-else"))
    results = [
        CallResult(
            text=f"answer {n}",
            finish_reason="stop",
            prompt_tokens=3,
            completion_tokens=n + 1,
            served_by="openai/batch",
            cost_usd=Decimal("0.000123456789"),  # more digits than the column keeps
            latency_ms=40 + n,
        )
        for n in range(3)
    ]
    done = now + timedelta(seconds=1)
    with database.transaction() as session:
        ended = complete_jobs(
            session,
            [Completion(c, r) for c, r in zip(claims, results, strict=True)],
            done,
            send_now=SendNow(30),
        )
    assert [t.applied for t in ended] == [True, False, True]
    assert ended[0].event_ids == [] and len(ended[0].events) == 1  # claimed for the worker to send
    assert ended[2].events == [] and ended[2].event_ids == []  # no webhook
    sent = ended[0].events[0]
    assert sent.attempt == 1 and sent.secret == tenant.webhook_secret and sent.url == "http://x/h"
    with database.session() as session:
        jobs = {j.id: j for j in session.query(Job).filter(Job.id.in_([c.job_id for c in claims]))}
        attempts = {
            a.job_id: a for a in session.query(Attempt).filter(Attempt.job_id.in_([c.job_id for c in claims]))
        }
        events = session.query(WebhookEvent).filter(WebhookEvent.job_id.in_(list(jobs))).all()
    first, taken, third = (jobs[c.job_id] for c in claims)
    assert (first.status, first.result_text, first.total_tokens, first.cost_usd) == (
        "completed",
        "answer 0",
        4,
        Decimal("0.00012346"),
    )
    assert first.lease_token is None and first.completed_at == done and first.progress == 1.0
    assert (taken.status, taken.result_text) == ("processing", None)
    assert (third.status, third.result_text, third.completion_tokens) == ("completed", "answer 2", 3)
    assert [attempts[c.job_id].outcome for c in claims] == ["success", "discarded", "success"]
    assert attempts[claims[2].job_id].latency_ms == 42 and attempts[claims[2].job_id].ended_at == done
    assert [(e.id, e.job_id, e.attempts, e.status) for e in events] == [
        (sent.event_id, first.id, 1, "pending")
    ]
    payload = json.loads(events[0].payload)
    assert payload["type"] == "job.completed" and payload["data"]["result"]["text"] == "answer 0"
    # the payload is built from the claim and the result, not read back: it must be the job as stored
    assert payload["data"] == json.loads(json.dumps(job_public(first)))
    assert (
        payload["data"]["route_reason"] == "rerouted for the test"
        and payload["data"]["cost_usd"] == 0.00012346
    )
    assert ended[2].job is not None and job_public(ended[2].job) == job_public(third)


def test_a_claim_opens_the_attempt_and_the_gate_corrects_or_removes_it(
    tenant: IssuedKey, database: Database
) -> None:
    """On Postgres the claim writes the attempt row in the same statement, for the model the job is
    on. When the gate sends the call elsewhere the row follows; when it parks the job the row goes
    (a parked job has made no attempt); a cache hit closes it at once."""
    now = utcnow()
    new = NewJob(model="openai/first", messages=[{"role": "user", "content": "hi"}])
    with database.transaction() as session:
        ids = [
            create_job(session, tenant_id=tenant.tenant_id, new=new, now=now, max_attempts=5)[0].id
            for _ in range(3)
        ]
        claims = [
            claim_job(session, job_id, lease_token=secrets.token_hex(8), lease_s=600, worker="w1", now=now)
            for job_id in ids
        ]
        assert all(c is not None and c.attempt_opened for c in claims)
        rerouted, parked, cached = claims
        assert rerouted is not None and parked is not None and cached is not None
        rerouted = record_attempt(
            session, rerouted, model="anthropic/second", now=now, route_reason="breaker open"
        )
        park_job(
            session, parked, now=now, until=now + timedelta(seconds=30), reason="rate_limited", enqueued=False
        )
        record_attempt(session, cached, model="openai/first", now=now, outcome=AttemptOutcome.CACHED)
    with database.session() as session:
        attempts = {a.job_id: a for a in session.query(Attempt).filter(Attempt.job_id.in_(ids))}
        jobs = {j.id: j for j in session.query(Job).filter(Job.id.in_(ids))}
    first = attempts[ids[0]]
    assert (first.number, first.provider, first.model, first.worker, first.outcome) == (
        1,
        "anthropic",
        "anthropic/second",
        "w1",
        "running",
    )
    assert first.started_at == now and first.ended_at is None
    assert (jobs[ids[0]].current_model, jobs[ids[0]].route_reason) == ("anthropic/second", "breaker open")
    assert rerouted.model == "anthropic/second" and rerouted.route_reason == "breaker open"
    assert ids[1] not in attempts
    assert (jobs[ids[1]].status, jobs[ids[1]].attempts, jobs[ids[1]].wait_reason) == (
        "queued",
        0,
        "rate_limited",
    )
    assert (attempts[ids[2]].model, attempts[ids[2]].outcome, attempts[ids[2]].ended_at) == (
        "openai/first",
        "cached",
        now,
    )
