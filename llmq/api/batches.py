"""``/v1/batches``: create a batch from an uploaded file, read it, cancel it, list them.

The views only validate and call the domain (``models/batches.py``); the batch's lines are made
into jobs by ``llmq.batch_expand`` and the batch is moved along by ``llmq.batch_tick``."""

from __future__ import annotations

import structlog
from flask import Blueprint, Response, g, jsonify, request

from llmq.api.auth import require_tenant
from llmq.api.batch_schemas import BatchCreate, PageQuery
from llmq.api.context import app_db, app_settings
from llmq.api.errors import ApiError
from llmq.api.jobs import _json_body
from llmq.api.openai_errors import use_openai_errors
from llmq.models.base import utcnow
from llmq.models.batches import (
    BatchAlreadyEnded,
    BatchNotFound,
    InvalidInputFile,
    batch_public,
    create_batch,
    get_batch,
    list_batches,
    request_cancel,
)
from llmq.tasks.enqueue import try_enqueue_batch_expand

logger = structlog.get_logger(__name__)
bp = Blueprint("batches", __name__)
use_openai_errors(bp)


@bp.post("/v1/batches")
@require_tenant
def create() -> Response:
    body = _json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", type="invalid_request_error")
    spec = BatchCreate.model_validate(body)
    try:
        with app_db().transaction() as session:
            batch = create_batch(
                session,
                tenant_id=g.tenant.id,
                api_key_id=g.tenant.key_id,
                input_file_id=spec.input_file_id,
                endpoint=spec.endpoint,
                completion_window=spec.completion_window,
                window_s=app_settings().batch_completion_window_s,
                metadata=spec.metadata,
                request_id=g.get("request_id"),
                now=utcnow(),
            )
            payload = batch_public(batch)
    except InvalidInputFile as exc:
        raise ApiError(400, str(exc), type="invalid_request_error") from None
    # Committed: if the broker cannot take the expansion now, the batch tick sends it later.
    try_enqueue_batch_expand(payload["id"])
    logger.info("batch_created", batch_id=payload["id"], input_file_id=spec.input_file_id)
    return jsonify(payload)


@bp.get("/v1/batches/<batch_id>")
@require_tenant
def retrieve(batch_id: str) -> Response:
    with app_db().session() as session:
        try:
            return jsonify(batch_public(get_batch(session, g.tenant.id, batch_id)))
        except BatchNotFound:
            raise ApiError(404, f"no batch {batch_id!r}") from None


@bp.post("/v1/batches/<batch_id>/cancel")
@require_tenant
def cancel(batch_id: str) -> Response:
    try:
        with app_db().transaction() as session:
            payload = batch_public(
                request_cancel(session, tenant_id=g.tenant.id, batch_id=batch_id, now=utcnow())
            )
    except BatchNotFound:
        raise ApiError(404, f"no batch {batch_id!r}") from None
    except BatchAlreadyEnded as exc:
        raise ApiError(
            409, f"batch {batch_id} already ended as {exc.status}", type="batch_already_ended"
        ) from None
    logger.info("batch_cancel_requested", batch_id=batch_id)
    return jsonify(payload)


@bp.get("/v1/batches")
@require_tenant
def list_() -> Response:
    query = PageQuery.model_validate(request.args.to_dict())
    with app_db().session() as session:
        try:
            rows, has_more = list_batches(
                session, tenant_id=g.tenant.id, after=query.after, limit=query.limit
            )
        except BatchNotFound:
            raise ApiError(404, f"no batch {query.after!r}") from None
        data = [batch_public(row) for row in rows]
    return jsonify(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )
