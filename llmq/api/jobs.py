"""``/v1/jobs`` and ``/status/<id>``: validate, call one domain function, shape the answer."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import structlog
from flask import Blueprint, Response, current_app, g, jsonify, request, url_for

from llmq.api.auth import require_tenant
from llmq.api.context import app_db, app_settings
from llmq.api.correlation import current_traceparent
from llmq.api.errors import ApiError
from llmq.api.schemas import JobCreate, JobListQuery
from llmq.api.surface_checks import check_providers_can_serve
from llmq.api.tenant_limits import check_models_allowed, check_submit_rate
from llmq.config.providers import is_known_model
from llmq.models.base import isoformat, utcnow
from llmq.models.outbox import events_for_job, schedule_redelivery
from llmq.models.records import IdempotencyConflict, JobAlreadyEnded, JobNotFound, NewJob
from llmq.models.submit import attempts_of, cancel_job, create_job, get_job, mark_not_enqueued
from llmq.models.submit import list_jobs as jobs_page
from llmq.models.tables import Job, job_public
from llmq.tasks.enqueue import try_enqueue_job, try_enqueue_webhook
from llmq.tasks.inflight import publish_cancel
from llmq.webhooks.ssrf import BlockedDestination, check_at_submit
from llmq.workers.metrics import job_submitted
from llmq.workers.progress import show_live_progress

logger = structlog.get_logger(__name__)
bp = Blueprint("jobs", __name__)

JSON_TYPES = {"", "application/json", "application/x-www-form-urlencoded"}


def _json_body() -> Any:
    """The request's JSON. curl's ``-d`` sends form-urlencoded by default, so a body sent that way
    is read as JSON too; any other explicit content type is a 415."""
    if request.mimetype not in JSON_TYPES and not request.mimetype.endswith("+json"):
        raise ApiError(415, f"send JSON (Content-Type: application/json), not {request.mimetype}")
    raw = request.get_data(cache=True)
    if not raw:
        raise ApiError(400, "the request body is empty; send a JSON object", type="invalid_json")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", type="invalid_json") from None


@bp.post("/v1/jobs")
@require_tenant
def submit() -> tuple[Response, int, dict[str, str]]:
    check_submit_rate(g.tenant)
    body = _json_body()
    if not isinstance(body, dict):
        raise ApiError(422, "the request body must be a JSON object", type="validation_error")
    spec = JobCreate.model_validate(body)
    payload, created = accept_job(spec, request.headers.get("Idempotency-Key"))
    location = url_for("jobs.read", job_id=payload["id"])
    return jsonify(payload), 202 if created else 200, {"Location": location}


def accept_job(spec: JobCreate, idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
    """Store a validated job for the request's tenant and send it to the queue: the one way in,
    for ``/v1/jobs`` and ``/v1/chat/completions`` alike. Returns the job object and whether it was
    created (False: an Idempotency-Key replay, answered with the first job)."""
    settings = app_settings()
    model = spec.model or settings.default_model
    providers = current_app.extensions["llmq.provider_specs"]
    for candidate in [model, *(spec.fallbacks or [])]:
        if candidate != "auto" and not is_known_model(providers, candidate):
            known = ", ".join(sorted(providers))
            raise ApiError(
                422,
                f"unknown provider in model {candidate!r}; known providers: {known}",
                type="validation_error",
            )
    check_models_allowed(g.tenant, [model, *(spec.fallbacks or [])])
    request_options = spec.options_dict()
    check_providers_can_serve(
        providers, current_app.extensions["llmq.providers"], [model, *(spec.fallbacks or [])], request_options
    )
    if idempotency_key is not None and not (1 <= len(idempotency_key) <= 255):
        raise ApiError(422, "Idempotency-Key must be 1 to 255 characters", type="validation_error")
    timeout_s = float(spec.timeout_s) if spec.timeout_s is not None else settings.job_timeout_s
    if timeout_s > settings.job_timeout_max_s:
        raise ApiError(
            422, f"timeout_s may be at most {settings.job_timeout_max_s:g}", type="validation_error"
        )
    webhook_url = str(spec.webhook_url) if spec.webhook_url else None
    if webhook_url and not settings.webhook_allow_private:
        try:
            check_at_submit(webhook_url)
        except BlockedDestination as exc:
            raise ApiError(422, f"webhook_url refused: {exc}", type="validation_error") from None
    new = NewJob(
        model=model,
        messages=spec.message_dicts(),
        max_tokens=spec.max_tokens,
        temperature=float(spec.temperature) if spec.temperature is not None else None,
        user=spec.user,
        webhook_url=webhook_url,
        metadata=spec.metadata,
        timeout_s=timeout_s,
        fallbacks=spec.fallbacks,
        use_cache=spec.cache,
        degraded_ok=spec.degraded_ok,
        priority=spec.priority,
        budget_wait=spec.on_budget_exceeded == "wait",
        request_options=request_options,
    )
    try:
        with app_db().transaction() as session:
            job, created = create_job(
                session,
                tenant_id=g.tenant.id,
                new=new,
                now=utcnow(),
                max_attempts=settings.max_attempts,
                idempotency_key=idempotency_key,
                idempotency_ttl_s=settings.idempotency_ttl_s,
                api_key_id=g.tenant.key_id,
                request_id=g.request_id,
                traceparent=current_traceparent(),
            )
            payload = job_public(job)
    except IdempotencyConflict:
        raise ApiError(
            409, "this Idempotency-Key was already used with a different request", type="idempotency_conflict"
        ) from None
    if not created:
        return payload, False
    # The row is committed, so the job is durable: the database is the outbox. If the broker cannot
    # take the message now, the job is marked never-enqueued and the sweeper enqueues it later.
    job_submitted()
    if not try_enqueue_job(payload["id"]):
        try:
            with app_db().transaction() as session:
                mark_not_enqueued(session, payload["id"])
        except Exception:  # still safe: the sweeper re-enqueues stale queued jobs too
            logger.warning("enqueue_mark_failed", job_id=payload["id"])
    logger.info("job_submitted", job_id=payload["id"], model=model)
    return payload, True


@bp.get("/v1/jobs/<job_id>")
@require_tenant
def read(job_id: str) -> Response:
    with app_db().session() as session:
        try:
            job = get_job(session, g.tenant.id, job_id)
        except JobNotFound:
            raise ApiError(404, f"no job {job_id!r}") from None
        view = job_public(job)
    show_live_progress(current_app.extensions["llmq.redis"], [(job, view)])
    return jsonify(view)


@bp.get("/status/<job_id>")
@require_tenant
def status(job_id: str) -> Response:
    return read(job_id)


@bp.get("/v1/jobs/<job_id>/attempts")
@require_tenant
def attempts(job_id: str) -> Response:
    with app_db().session() as session:
        try:
            get_job(session, g.tenant.id, job_id)
        except JobNotFound:
            raise ApiError(404, f"no job {job_id!r}") from None
        data = [
            {
                "number": a.number,
                "provider": a.provider,
                "model": a.model,
                "started_at": isoformat(a.started_at),
                "ended_at": isoformat(a.ended_at),
                "outcome": a.outcome,
                "error_type": a.error_type,
                "error_message": a.error_message,
                "http_status": a.http_status,
                "latency_ms": a.latency_ms,
                "retry_after_s": a.retry_after_s,
                "prompt_tokens": a.prompt_tokens,
                "completion_tokens": a.completion_tokens,
                "cached_tokens": a.cached_tokens,
                "cache_write_tokens": a.cache_write_tokens,
                "cost_usd": float(a.cost_usd) if a.cost_usd is not None else None,  # what it was billed
            }
            for a in attempts_of(session, job_id)
        ]
    return jsonify({"object": "list", "data": data})


@bp.post("/v1/jobs/<job_id>/cancel")
@require_tenant
def cancel(job_id: str) -> Response:
    try:
        with app_db().transaction() as session:
            transition = cancel_job(session, tenant_id=g.tenant.id, job_id=job_id, now=utcnow())
            assert transition.job is not None
            payload = job_public(transition.job)
    except JobNotFound:
        raise ApiError(404, f"no job {job_id!r}") from None
    except JobAlreadyEnded as exc:
        raise ApiError(409, f"job {job_id} already ended as {exc.status}", type="job_already_ended") from None
    try:  # tell the worker running it, if any, to stop waiting on the provider now
        publish_cancel(current_app.extensions["llmq.redis"], job_id)
    except Exception:  # the worker's lease keeper notices within lease_s / 3 anyway
        logger.warning("cancel_publish_failed", job_id=job_id)
    for event_id in transition.event_ids:
        try_enqueue_webhook(event_id)
    logger.info("job_cancelled", job_id=job_id)
    return jsonify(payload)


@bp.get("/v1/jobs/<job_id>/webhooks")
@require_tenant
def webhooks(job_id: str) -> Response:
    """Every webhook event of the job, with every delivery attempt."""
    with app_db().session() as session:
        try:
            get_job(session, g.tenant.id, job_id)
        except JobNotFound:
            raise ApiError(404, f"no job {job_id!r}") from None
        data = events_for_job(session, job_id)
    return jsonify({"object": "list", "data": data})


@bp.post("/v1/jobs/<job_id>/webhooks/redeliver")
@require_tenant
def redeliver(job_id: str) -> tuple[Response, int]:
    """Send the job's final event once more, with the same ``webhook-id``."""
    with app_db().transaction() as session:
        try:
            get_job(session, g.tenant.id, job_id)
        except JobNotFound:
            raise ApiError(404, f"no job {job_id!r}") from None
        event_id = schedule_redelivery(session, job_id, utcnow())
        if event_id is None:
            raise ApiError(409, "this job has no webhook event to redeliver yet", type="conflict")
    try_enqueue_webhook(event_id)  # the event is due now: the sweeper sends it if the broker is away
    with app_db().session() as session:
        data = events_for_job(session, job_id)
    return jsonify({"object": "list", "data": data}), 202


@bp.get("/v1/jobs")
@require_tenant
def list_jobs() -> Response:
    query = JobListQuery.model_validate(request.args.to_dict())
    after = _decode_cursor(query.cursor) if query.cursor else None
    with app_db().session() as session:
        jobs, has_more = jobs_page(
            session, tenant_id=g.tenant.id, status=query.status, after=after, limit=query.limit
        )
    next_cursor = _encode_cursor(jobs[-1]) if has_more else None
    views = [job_public(j) for j in jobs]
    show_live_progress(current_app.extensions["llmq.redis"], zip(jobs, views, strict=True))
    return jsonify(
        {
            "object": "list",
            "data": views,
            "has_more": has_more,
            "next_cursor": next_cursor,
        }
    )


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), job_id
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "invalid cursor", type="validation_error") from None
