"""The HTTP contract: authentication, tenant isolation, validation errors as JSON with no job
left behind, idempotency, listing, and the operations endpoints."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from llmq.models.db import Database
from llmq.models.migrate import heads
from llmq.models.tables import Job, WebhookEvent
from llmq.models.tenants import IssuedKey
from tests.integration.conftest import SimulatorControl, unique_model


def _job_count(database: Database, tenant: IssuedKey) -> int:
    with database.session() as session:
        return int(
            session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.tenant_id))
            or 0
        )


def _error(response: Any) -> dict[str, Any]:
    assert response.is_json, response.data[:200]
    body = response.get_json()
    assert set(body) == {"error"} and {"type", "message"} <= set(body["error"])
    return body["error"]


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer ", "Basic abc", "Bearer llmq_sk_not-a-key"])
def test_missing_or_bad_key_is_401(client: FlaskClient, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for response in (
        client.post("/v1/jobs", json={"prompt": "hi"}, headers=headers),
        client.get("/v1/jobs", headers=headers),
        client.get("/status/job_x", headers=headers),
    ):
        assert response.status_code == 401
        assert _error(response)["type"] == "unauthorized"


def test_another_tenants_job_is_404_like_an_unknown_id(
    client: FlaskClient, auth: dict[str, str], database: Database
) -> None:
    from llmq.models.base import utcnow
    from llmq.models.tenants import create_key

    with database.transaction() as session:
        other = create_key(
            session, tenant_name=f"other-{uuid.uuid4().hex[:6]}", now=utcnow(), tier="unlimited"
        )
    other_auth = {"Authorization": f"Bearer {other.api_key}"}
    job = client.post("/v1/jobs", json={"prompt": "mine"}, headers=auth).get_json()
    for path in (f"/v1/jobs/{job['id']}", f"/status/{job['id']}", f"/v1/jobs/{job['id']}/attempts"):
        foreign = client.get(path, headers=other_auth)
        unknown = client.get(path.replace(job["id"], "job_doesnotexist"), headers=other_auth)
        assert foreign.status_code == unknown.status_code == 404
        assert _error(foreign)["type"] == _error(unknown)["type"] == "not_found"
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=other_auth).status_code == 404
    assert job["id"] not in [j["id"] for j in client.get("/v1/jobs", headers=other_auth).get_json()["data"]]


BAD_BODIES: list[tuple[str, Any, int]] = [
    ("missing prompt", {"model": "openai/gpt-4o-mini"}, 422),
    ("both prompt and messages", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 422),
    ("empty prompt", {"prompt": ""}, 422),
    ("oversized prompt", {"prompt": "x" * 100_001}, 422),
    ("prompt not a string", {"prompt": 42}, 422),
    ("messages not a list", {"messages": "hi"}, 422),
    ("empty messages", {"messages": []}, 422),
    ("bad role", {"messages": [{"role": "robot", "content": "hi"}]}, 422),
    ("message without content", {"messages": [{"role": "user"}]}, 422),
    ("max_tokens 0", {"prompt": "a", "max_tokens": 0}, 422),
    ("max_tokens too large", {"prompt": "a", "max_tokens": 32_769}, 422),
    ("max_tokens as string", {"prompt": "a", "max_tokens": "5"}, 422),
    ("max_tokens as bool", {"prompt": "a", "max_tokens": True}, 422),
    ("temperature negative", {"prompt": "a", "temperature": -0.1}, 422),
    ("temperature above 2", {"prompt": "a", "temperature": 2.5}, 422),
    ("temperature as string", {"prompt": "a", "temperature": "hot"}, 422),
    ("webhook not http", {"prompt": "a", "webhook_url": "ftp://example.com/x"}, 422),
    ("webhook not a url", {"prompt": "a", "webhook_url": "not a url"}, 422),
    ("metadata values not strings", {"prompt": "a", "metadata": {"n": 1}}, 422),
    ("metadata not an object", {"prompt": "a", "metadata": ["x"]}, 422),
    ("user with spaces", {"prompt": "a", "user": "john smith"}, 422),
    ("user too long", {"prompt": "a", "user": "u" * 129}, 422),
    ("unknown field", {"prompt": "a", "tempreature": 1}, 422),
    ("model without provider", {"prompt": "a", "model": "gpt-4o-mini"}, 422),
    ("unknown provider", {"prompt": "a", "model": "nosuch/model-1"}, 422),
    ("body is a list", ["prompt"], 422),
]


@pytest.mark.parametrize(("case", "body", "status"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_body_is_a_json_error_and_creates_no_job(
    client: FlaskClient,
    auth: dict[str, str],
    tenant: IssuedKey,
    database: Database,
    case: str,
    body: Any,
    status: int,
) -> None:
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == status, response.get_json()
    error = _error(response)
    assert error["type"] == "validation_error"
    assert error["message"]
    assert _job_count(database, tenant) == 0


def test_non_json_bodies(
    client: FlaskClient, auth: dict[str, str], tenant: IssuedKey, database: Database
) -> None:
    not_json = client.post(
        "/v1/jobs", data="{prompt: hi", headers={**auth, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 400 and _error(not_json)["type"] == "invalid_json"
    empty = client.post("/v1/jobs", data="", headers={**auth, "Content-Type": "application/json"})
    assert empty.status_code == 400
    wrong_type = client.post("/v1/jobs", data="prompt=hi", headers={**auth, "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415 and _error(wrong_type)["type"] == "unsupported_media_type"
    too_big = client.post(
        "/v1/jobs", data="x" * 1_000_001, headers={**auth, "Content-Type": "application/json"}
    )
    assert too_big.status_code == 413 and _error(too_big)["type"] == "payload_too_large"
    assert _job_count(database, tenant) == 0


def test_curl_default_form_content_type_is_read_as_json(client: FlaskClient, auth: dict[str, str]) -> None:
    response = client.post(
        "/v1/jobs",
        data='{"prompt":"Hello"}',
        headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 202


def test_messages_and_every_optional_field_are_stored(client: FlaskClient, auth: dict[str, str]) -> None:
    body = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "model": "anthropic/claude-3-5-haiku-latest",
        "max_tokens": 64,
        "temperature": 0.5,
        "webhook_url": "https://example.com/hooks/llmq",
        "metadata": {"customer": "c_1"},
        "user": "end-user_1.x",
    }
    job = client.post("/v1/jobs", json=body, headers=auth).get_json()
    assert job["model"] == body["model"]
    assert job["webhook_url"] == body["webhook_url"]
    assert job["metadata"] == body["metadata"]
    assert job["result"] is None and job["usage"] is None and job["error"] is None
    assert job["attempts"] == 0 and job["progress"] == 0.0
    assert job["created_at"].endswith("Z")


def test_default_model_comes_from_settings(client: FlaskClient, auth: dict[str, str], settings: Any) -> None:
    job = client.post("/v1/jobs", json={"prompt": "hi"}, headers=auth).get_json()
    assert job["model"] == settings.default_model


def test_idempotency_key_returns_the_first_job(
    client: FlaskClient, auth: dict[str, str], tenant: IssuedKey, database: Database
) -> None:
    headers = {**auth, "Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    first = client.post("/v1/jobs", json={"prompt": "once"}, headers=headers)
    second = client.post("/v1/jobs", json={"prompt": "once"}, headers=headers)
    assert first.status_code == 202 and second.status_code == 200
    assert first.get_json()["id"] == second.get_json()["id"]
    conflict = client.post("/v1/jobs", json={"prompt": "different"}, headers=headers)
    assert conflict.status_code == 409 and _error(conflict)["type"] == "idempotency_conflict"
    assert _job_count(database, tenant) == 1


def test_listing_is_newest_first_with_cursor_and_status_filter(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    ids = [client.post("/v1/jobs", json={"prompt": f"n{i}"}, headers=auth).get_json()["id"] for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        query = "/v1/jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(query, headers=auth).get_json()
        assert page["object"] == "list"
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == list(reversed(ids))
    cancelled = client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth).get_json()
    assert cancelled["status"] == "cancelled"
    only = client.get("/v1/jobs?status=cancelled", headers=auth).get_json()["data"]
    assert [j["id"] for j in only] == [ids[0]]
    for bad in ("limit=0", "limit=101", "status=done", "cursor=!!!"):
        response = client.get(f"/v1/jobs?{bad}", headers=auth)
        assert response.status_code == 422, bad
        _error(response)


def test_operations_endpoints(client: FlaskClient) -> None:
    assert client.get("/health").get_json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.get_json()["checks"] == {"database": "ok", "broker": "ok"}
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/status/{job_id}", "/v1/jobs/{job_id}/cancel", "/ready"} <= set(
        spec["paths"]
    )
    assert "JobCreate" in spec["components"]["schemas"]
    metrics = client.get("/metrics")
    text = metrics.get_data(as_text=True)
    assert metrics.status_code == 200
    assert "llmq_http_requests_total" in text and "llmq_http_request_duration_seconds" in text
    assert "llmq_queue_depth{" in text and "llmq_jobs_submitted_total" in text
    unknown = client.get("/no/such/page")
    assert unknown.status_code == 404 and _error(unknown)["type"] == "not_found"
    wrong_method = client.delete("/v1/jobs")
    assert wrong_method.status_code == 405 and _error(wrong_method)


def test_ready_names_the_unreachable_broker(settings: Any, database: Database) -> None:
    from llmq.api.app import create_app

    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    app = create_app(broken)
    response = app.test_client().get("/ready")
    app.extensions["llmq.db"].dispose()
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] == "ok"
    assert response.get_json()["checks"]["broker"].startswith("unreachable")


def test_submit_with_the_broker_down_is_still_accepted_and_kept_for_the_sweeper(
    settings: Any, tenant: IssuedKey, database: Database
) -> None:
    from llmq.api.app import create_app
    from llmq.tasks.app import configure_celery

    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    app = create_app(broken)
    try:
        client = app.test_client()
        response = client.post(
            "/v1/jobs", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {tenant.api_key}"}
        )
        assert response.status_code == 202
        with database.session() as session:
            job = session.get(Job, response.get_json()["id"])
            assert job is not None and job.status == "queued"
            assert job.enqueued_at is None  # the outbox mark: the sweeper enqueues it
    finally:
        app.extensions["llmq.db"].dispose()
        configure_celery(settings)


def test_cancel_and_redeliver_with_the_broker_down_answer_and_leave_the_event_to_the_sweeper(
    settings: Any, tenant: IssuedKey, database: Database, sim: SimulatorControl
) -> None:
    from llmq.api.app import create_app
    from llmq.tasks.app import configure_celery

    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    app = create_app(broken)
    auth = {"Authorization": f"Bearer {tenant.api_key}"}
    # The session worker's sweeper may send the job meanwhile (its broker is up): a slow answer
    # keeps the job cancellable whichever state it is in when the cancel comes.
    model = unique_model("slow")
    sim.script(model, [], default={"latency": 60})
    try:
        client = app.test_client()
        body = {"prompt": "hi", "model": f"openai/{model}", "webhook_url": "http://127.0.0.1:9/hook"}
        job_id = client.post("/v1/jobs", json=body, headers=auth).get_json()["id"]
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200
        response = client.post(f"/v1/jobs/{job_id}/webhooks/redeliver", headers=auth)
        assert response.status_code == 202, response.get_json()
        (event,) = response.get_json()["data"]
        assert event["type"] == "job.cancelled"
        with database.session() as session:
            stored = session.get(WebhookEvent, event["id"])
            assert stored is not None and stored.status == "pending" and stored.next_attempt_at is not None
    finally:
        app.extensions["llmq.db"].dispose()
        configure_celery(settings)


def test_migrations_have_a_single_head() -> None:
    assert len(heads()) == 1


def test_the_migrated_schema_matches_the_models(settings: Any, database: Database) -> None:
    """The test database was built by running the migrations; the models must not differ."""
    from alembic import command

    from llmq.models.migrate import alembic_config

    command.check(alembic_config(settings.database_url))
