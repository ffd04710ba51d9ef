"""The whole pipeline on real parts: the Flask API over the real database and broker, a real
Celery worker process, the provider simulator over HTTP through the official SDKs, and a local
webhook receiver."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise

import pytest
from flask.testing import FlaskClient

from llmq.models.db import Database
from llmq.models.tables import Attempt, WebhookDelivery, WebhookEvent
from llmq.models.tenants import IssuedKey
from llmq.webhooks import verify
from tests.integration.conftest import SimulatorControl, settle, unique_model, wait_for_status
from tests.integration.services import WebhookReceiver, wait_for

pytestmark = pytest.mark.usefixtures("worker")


def _attempts(database: Database, job_id: str) -> list[Attempt]:
    with database.session() as session:
        return list(session.query(Attempt).filter_by(job_id=job_id).order_by(Attempt.number))


@pytest.mark.parametrize("provider", ["openai", "anthropic", "local"])
def test_submitted_job_completes_and_its_webhook_arrives_once_signed(
    provider: str,
    client: FlaskClient,
    auth: dict[str, str],
    tenant: IssuedKey,
    sim: SimulatorControl,
    webhook_receiver: WebhookReceiver,
    database: Database,
) -> None:
    bare = unique_model(provider)
    path = f"/hook/{bare}"
    response = client.post(
        "/v1/jobs",
        json={
            "prompt": "Hello there",
            "model": f"{provider}/{bare}",
            "max_tokens": 50,
            "webhook_url": webhook_receiver.url(path),
            "metadata": {"order": "42"},
        },
        headers=auth,
    )
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["id"].startswith("job_") and job["status"] == "queued"
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"

    done = wait_for_status(client, auth, job["id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    assert "Hello there" in done["result"]["text"]
    assert done["result"]["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] > 0
    assert (
        done["usage"]["total_tokens"] == done["usage"]["prompt_tokens"] + done["usage"]["completion_tokens"]
    )
    assert done["attempts"] == 1
    assert done["served_by"] == f"{provider}/{bare}"
    assert done["metadata"] == {"order": "42"}
    assert done["cost_usd"] is None  # a model the price list does not know: cost unknown
    assert sim.requests_for(bare) == 1
    assert client.get(f"/status/{job['id']}", headers=auth).get_json() == done

    hooks = wait_for(lambda: webhook_receiver.for_path(path), what="the webhook")
    settle(1.0)
    hooks = webhook_receiver.for_path(path)
    assert len(hooks) == 1
    event = verify(tenant.webhook_secret, hooks[0].body, hooks[0].headers)
    assert event["type"] == "job.completed"
    assert event["data"] == done
    assert hooks[0].headers["webhook-id"].startswith("msg_")
    assert _attempts(database, job["id"])[0].outcome == "success"


def test_known_model_is_priced(client: FlaskClient, auth: dict[str, str]) -> None:
    job = client.post(
        "/v1/jobs", json={"prompt": "Price me", "model": "openai/gpt-4o-mini"}, headers=auth
    ).get_json()
    done = wait_for_status(client, auth, job["id"], {"completed", "failed"})
    usage = done["usage"]
    expected = (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.60) / 1_000_000
    assert done["cost_usd"] == pytest.approx(expected, abs=1e-8)


def test_rate_limited_job_retries_after_retry_after_header(
    client: FlaskClient, auth: dict[str, str], sim: SimulatorControl, database: Database
) -> None:
    bare = unique_model("ratelimited")
    sim.script(bare, [{"fault": "429", "retry_after": 1}, {"fault": "429", "retry_after": 1}])
    job = client.post("/v1/jobs", json={"prompt": "hi", "model": f"openai/{bare}"}, headers=auth).get_json()
    done = wait_for_status(client, auth, job["id"], {"completed", "failed"})
    assert done["status"] == "completed"
    assert done["attempts"] == 3
    attempts = _attempts(database, job["id"])
    assert [a.outcome for a in attempts] == ["retryable_error", "retryable_error", "success"]
    assert [a.http_status for a in attempts] == [429, 429, 200]
    assert attempts[0].retry_after_s == pytest.approx(1.0)
    for earlier, later in pairwise(attempts):
        assert earlier.ended_at is not None
        gap = (later.started_at - earlier.ended_at).total_seconds()
        assert gap >= 1.0, f"retried after {gap:.2f}s, before the Retry-After of 1 s"
    assert sim.requests_for(bare) == 3


def test_provider_400_fails_at_once_with_invalid_request(
    client: FlaskClient, auth: dict[str, str], sim: SimulatorControl
) -> None:
    bare = unique_model("bad")
    sim.script(bare, [{"fault": "400", "message": "unsupported parameter"}])
    job = client.post("/v1/jobs", json={"prompt": "hi", "model": f"openai/{bare}"}, headers=auth).get_json()
    done = wait_for_status(client, auth, job["id"], {"completed", "failed"})
    assert done["status"] == "failed"
    assert done["attempts"] == 1
    assert done["error"]["type"] == "invalid_request"
    assert done["result"] is None
    settle(0.5)
    assert sim.requests_for(bare) == 1


def test_anthropic_529_overloaded_is_retried(
    client: FlaskClient, auth: dict[str, str], sim: SimulatorControl
) -> None:
    bare = unique_model("overloaded")
    sim.script(bare, [{"fault": "529"}])
    job = client.post(
        "/v1/jobs", json={"prompt": "hi", "model": f"anthropic/{bare}"}, headers=auth
    ).get_json()
    done = wait_for_status(client, auth, job["id"], {"completed", "failed"})
    assert done["status"] == "completed" and done["attempts"] == 2


def test_hung_provider_times_out_then_the_retry_succeeds(
    client: FlaskClient, auth: dict[str, str], sim: SimulatorControl, database: Database
) -> None:
    bare = unique_model("hang")
    sim.script(bare, [{"fault": "hang", "seconds": 60}])
    job = client.post("/v1/jobs", json={"prompt": "hi", "model": f"openai/{bare}"}, headers=auth).get_json()
    done = wait_for_status(client, auth, job["id"], {"completed", "failed"})
    assert done["status"] == "completed"
    attempts = _attempts(database, job["id"])
    assert [a.outcome for a in attempts] == ["retryable_error", "success"]
    assert attempts[0].error_type == "timeout"


def test_dropped_connection_is_retried(
    client: FlaskClient, auth: dict[str, str], sim: SimulatorControl, database: Database
) -> None:
    bare = unique_model("drop")
    sim.script(bare, [{"fault": "drop"}, {"fault": "500"}])
    job = client.post("/v1/jobs", json={"prompt": "hi", "model": f"openai/{bare}"}, headers=auth).get_json()
    done = wait_for_status(client, auth, job["id"], {"completed", "failed"})
    assert done["status"] == "completed" and done["attempts"] == 3
    assert [a.error_type for a in _attempts(database, job["id"])][:2] == [
        "connection_error",
        "provider_error",
    ]


def test_transient_errors_exhaust_the_attempts_and_keep_the_last_error(
    client: FlaskClient, auth: dict[str, str], sim: SimulatorControl
) -> None:
    bare = unique_model("down")
    sim.script(bare, [], default={"fault": "500"})
    job = client.post("/v1/jobs", json={"prompt": "hi", "model": f"openai/{bare}"}, headers=auth).get_json()
    done = wait_for_status(client, auth, job["id"], {"completed", "failed"}, timeout=60)
    assert done["status"] == "failed"
    assert done["attempts"] == 5
    assert done["error"]["type"] == "provider_error"
    listed = client.get(f"/v1/jobs/{job['id']}/attempts", headers=auth).get_json()["data"]
    assert [a["number"] for a in listed] == [1, 2, 3, 4, 5]
    assert sim.requests_for(bare) == 5


def test_cancel_of_a_queued_job_sends_job_cancelled(
    client: FlaskClient,
    auth: dict[str, str],
    sim: SimulatorControl,
    webhook_receiver: WebhookReceiver,
    tenant: IssuedKey,
) -> None:
    bare = unique_model("waits")
    sim.script(bare, [{"fault": "429", "retry_after": 30}])
    path = f"/hook/{bare}"
    job = client.post(
        "/v1/jobs",
        json={"prompt": "hi", "model": f"openai/{bare}", "webhook_url": webhook_receiver.url(path)},
        headers=auth,
    ).get_json()
    waiting = wait_for(
        lambda: (j := client.get(f"/v1/jobs/{job['id']}", headers=auth).get_json())["wait_reason"] and j,
        what="the job to wait for its retry",
    )
    assert waiting["status"] == "queued" and waiting["wait_reason"] == "rate_limited"
    assert datetime.fromisoformat(waiting["next_attempt_at"]) > datetime.fromisoformat(waiting["created_at"])

    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert response.status_code == 200
    assert response.get_json()["status"] == "cancelled"
    assert response.get_json()["error"]["type"] == "cancelled"
    hooks = wait_for(lambda: webhook_receiver.for_path(path), what="job.cancelled")
    assert verify(tenant.webhook_secret, hooks[0].body, hooks[0].headers)["type"] == "job.cancelled"

    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status_code == 409
    assert again.get_json()["error"]["type"] == "job_already_ended"


def test_cancel_of_a_processing_job_discards_the_late_answer(
    client: FlaskClient,
    auth: dict[str, str],
    sim: SimulatorControl,
    webhook_receiver: WebhookReceiver,
    database: Database,
) -> None:
    bare = unique_model("slow")
    sim.script(bare, [{"fault": "ok", "latency": 1.5}])
    path = f"/hook/{bare}"
    job = client.post(
        "/v1/jobs",
        json={"prompt": "hi", "model": f"openai/{bare}", "webhook_url": webhook_receiver.url(path)},
        headers=auth,
    ).get_json()
    wait_for_status(client, auth, job["id"], {"processing"})
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).get_json()
    assert cancelled["status"] == "cancelled"

    wait_for(lambda: _attempts(database, job["id"])[0].ended_at is not None, what="the provider to answer")
    settle(1.0)
    final = client.get(f"/v1/jobs/{job['id']}", headers=auth).get_json()
    assert final["status"] == "cancelled"
    assert final["result"] is None and final["usage"] is None
    assert _attempts(database, job["id"])[0].outcome == "discarded"
    assert sim.requests_for(bare) == 1
    hooks = webhook_receiver.for_path(path)
    assert [h.json()["type"] for h in hooks] == ["job.cancelled"]


def test_failed_webhook_is_retried_with_the_same_webhook_id(
    client: FlaskClient,
    auth: dict[str, str],
    webhook_receiver: WebhookReceiver,
    database: Database,
    tenant: IssuedKey,
) -> None:
    path = "/hook/flaky"
    webhook_receiver.fail_next(path, 2, status=503)
    job = client.post(
        "/v1/jobs", json={"prompt": "hi", "webhook_url": webhook_receiver.url(path)}, headers=auth
    ).get_json()
    wait_for(lambda: len(webhook_receiver.for_path(path)) >= 3, timeout=30, what="three webhook attempts")
    hooks = webhook_receiver.for_path(path)
    assert len({h.headers["webhook-id"] for h in hooks}) == 1
    assert len({h.body for h in hooks}) == 1
    for hook in hooks:
        assert verify(tenant.webhook_secret, hook.body, hook.headers)["data"]["id"] == job["id"]
    with database.session() as session:
        event = session.query(WebhookEvent).filter_by(job_id=job["id"]).one()
        wait_for(
            lambda: (
                session.query(WebhookEvent).filter_by(job_id=job["id"]).populate_existing().one().status
                == "delivered"
            )
        )
        deliveries = (
            session.query(WebhookDelivery)
            .filter_by(event_id=event.id)
            .order_by(WebhookDelivery.attempt)
            .all()
        )
    assert [(d.attempt, d.status_code, d.success) for d in deliveries] == [
        (1, 503, False),
        (2, 503, False),
        (3, 204, True),
    ]


def test_a_job_that_ended_never_runs_again(
    client: FlaskClient, auth: dict[str, str], sim: SimulatorControl
) -> None:
    from llmq.tasks.enqueue import enqueue_job

    bare = unique_model("once")
    job = client.post("/v1/jobs", json={"prompt": "hi", "model": f"openai/{bare}"}, headers=auth).get_json()
    done = wait_for_status(client, auth, job["id"], {"completed"})
    enqueue_job(job["id"])  # a duplicate delivery of the same message
    enqueue_job(job["id"])
    settle(1.5)
    assert sim.requests_for(bare) == 1
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).get_json() == done


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_streamed_job_shows_progress_and_partial_text_while_it_runs(
    provider: str, client: FlaskClient, auth: dict[str, str], sim: SimulatorControl
) -> None:
    bare = unique_model(f"stream-{provider}")
    sim.script(bare, [{"fault": "ok", "latency": 4}])
    job = client.post(
        "/v1/jobs",
        json={"prompt": "Tell me a story", "model": f"{provider}/{bare}", "max_tokens": 40},
        headers=auth,
    ).get_json()
    running = wait_for(
        lambda: (
            (j := client.get(f"/v1/jobs/{job['id']}", headers=auth).get_json())["status"] == "processing"
            and j["partial_text"]
            and j
        ),
        timeout=20,
        what="partial text while processing",
    )
    assert 0 < running["progress"] < 1
    assert running["result"] is None
    done = wait_for_status(client, auth, job["id"], {"completed", "failed"})
    assert done["status"] == "completed"
    assert done["progress"] == 1.0 and done["partial_text"] is None
    assert done["result"]["text"].startswith(running["partial_text"].split()[0])
    assert len(done["result"]["text"]) >= len(running["partial_text"])


def test_a_stream_dropped_halfway_is_retried_and_the_partial_text_is_not_kept(
    client: FlaskClient, auth: dict[str, str], sim: SimulatorControl, database: Database
) -> None:
    reference_model = unique_model("whole")
    reference = client.post(
        "/v1/jobs", json={"prompt": "Same prompt", "model": f"openai/{reference_model}"}, headers=auth
    ).get_json()
    expected = wait_for_status(client, auth, reference["id"], {"completed"})["result"]["text"]

    bare = unique_model("streamdrop")
    sim.script(bare, [{"fault": "stream_drop", "after_words": 3}])
    job = client.post(
        "/v1/jobs", json={"prompt": "Same prompt", "model": f"openai/{bare}"}, headers=auth
    ).get_json()
    done = wait_for_status(client, auth, job["id"], {"completed", "failed"})
    assert done["status"] == "completed" and done["attempts"] == 2
    assert done["result"]["text"] == expected
    assert [a.error_type for a in _attempts(database, job["id"])] == ["stream_error", None]
