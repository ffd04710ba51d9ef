"""``POST /v1/chat/completions``: OpenAI's Chat Completions API, answered by a job.

The request becomes a job through the same door as ``POST /v1/jobs`` (``jobs.accept_job``: the
tenant's rpm, allowed models, Idempotency-Key, webhooks, budgets, retries and records all apply),
then the HTTP call waits for the job (``chat_wait.py``) up to ``LLMQ_CHAT_WAIT_S`` or the
request's ``X-LLMQ-Wait-Timeout``. Every answer carries ``X-LLMQ-Job-Id``; past the deadline the
answer is a 504 naming the job, which runs on and is read at ``/v1/jobs/<id>``.

``stream: true`` answers Server-Sent Events of ``chat.completion.chunk`` objects while the job
runs. Under gunicorn's gthread workers a waiting request, streamed or not, holds one thread of its
process for as long as it waits (it sleeps; it holds no database connection): at most
``LLMQ_CHAT_MAX_WAITING`` per process wait at once, so the process's other threads stay free for
short requests, and one more is refused with a 429 the SDK retries.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import sqlalchemy.exc
import structlog
from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context, url_for
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from llmq.api.auth import require_tenant
from llmq.api.chat_errors import (
    Refused,
    from_api_error,
    from_failed_job,
    from_validation_error,
    openai_error,
)
from llmq.api.chat_schemas import ChatCompletionCreate, unsupported_llmq_options
from llmq.api.chat_shape import ChunkMaker, sse
from llmq.api.chat_wait import Waiter, stream_events
from llmq.api.context import app_db, app_settings
from llmq.api.correlation import JOB_ID_HEADER
from llmq.api.errors import ApiError
from llmq.api.jobs import _json_body, accept_job
from llmq.api.schemas import JobCreate
from llmq.api.tenant_limits import check_submit_rate
from llmq.config.providers import is_known_model
from llmq.models.openai_shapes import completion, created_of, model_of
from llmq.observability.sentry import capture_exception

logger = structlog.get_logger(__name__)
bp = Blueprint("chat", __name__)
WAIT_HEADER = "X-LLMQ-Wait-Timeout"
_slots_lock = threading.Lock()


@bp.post("/v1/chat/completions")
@require_tenant
def create() -> Response:
    chat, spec = _parse()
    wait_s = _wait_s()
    slots = _slots()
    if not slots.acquire(blocking=False):
        raise ApiError(
            429,
            "this API process has too many chat completions waiting; retry shortly",
            type="chat_capacity",
            headers={"Retry-After": "1"},
        )
    streaming = False
    try:
        check_submit_rate(g.tenant)
        job, _ = accept_job(spec, request.headers.get("Idempotency-Key"))
        headers = {JOB_ID_HEADER: job["id"], "Location": url_for("jobs.read", job_id=job["id"])}
        waiter = Waiter(
            db=app_db(),
            redis=current_app.extensions["llmq.redis"],
            tenant_id=g.tenant.id,
            job_id=job["id"],
            deadline=time.monotonic() + wait_s,
            poll_max_s=app_settings().chat_poll_max_s,
        )
        if chat.stream:
            response = _stream(chat, job, waiter, headers)
            response.call_on_close(slots.release)  # when the stream ends or the client leaves
            streaming = True
            return response
        ended = waiter.wait()
    finally:
        if not streaming:
            slots.release()
    if ended is None:
        return _still_running(job["id"], headers)
    if ended["status"] != "completed":
        return from_failed_job(ended, headers)
    response = jsonify(completion(ended))
    response.headers.update(headers)
    if ended["cost_usd"] is not None:  # what the job's attempts were billed, as /v1/jobs says
        response.headers["X-LLMQ-Cost-USD"] = repr(ended["cost_usd"])
    return response


def _parse() -> tuple[ChatCompletionCreate, JobCreate]:
    """The request, and the job it becomes; refusals are raised in OpenAI's shape."""
    body = _json_body()
    if not isinstance(body, dict):
        raise Refused(openai_error(400, "The request body must be a JSON object."))
    chat = ChatCompletionCreate.model_validate(body)
    if chat.stream_options is not None and not chat.stream:
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        raise Refused(openai_error(400, message, param="stream_options", code="invalid_value"))
    unknown = unsupported_llmq_options(chat.llmq)
    if unknown:
        param = f"llmq.{unknown[0]}"
        raise Refused(openai_error(400, f"llmq does not know the option {param!r}", param=param))
    try:
        spec = chat.to_job()
    except ValidationError as exc:
        raise Refused(from_validation_error(exc, job=True)) from None
    model = spec.model or ""
    if model != "auto" and not is_known_model(current_app.extensions["llmq.provider_specs"], model):
        raise ApiError(
            404,
            f"The model `{chat.model}` does not exist or you do not have access to it.",
            type="model_not_found",
        )
    return chat, spec


def _stream(
    chat: ChatCompletionCreate, job: dict[str, Any], waiter: Waiter, headers: dict[str, str]
) -> Response:
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
    chunks = ChunkMaker(job["id"], created_of(job), model_of(job), include_usage)
    return Response(
        stream_with_context(_guarded(stream_events(waiter, chunks), job["id"])),
        mimetype="text/event-stream",
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _guarded(events: Any, job_id: str) -> Any:
    """The stream, ending with an error event if reading the job fails midway (the job runs on)."""
    try:
        yield from events
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        logger.warning("chat_stream_database_unavailable", job_id=job_id, error=type(exc).__name__)
        yield _event_error(job_id, "the database became unavailable while streaming")
    except Exception as exc:
        logger.exception("chat_stream_failed", job_id=job_id, error=type(exc).__name__)
        capture_exception(exc)
        yield _event_error(job_id, "internal error while streaming")


def _event_error(job_id: str, what: str) -> str:
    message = f"{what}; job {job_id} runs on, read it at /v1/jobs/{job_id}"
    return sse({"error": {"message": message, "type": "server_error", "param": None, "code": None}})


def _still_running(job_id: str, headers: dict[str, str]) -> Response:
    message = f"job {job_id} is still running at the wait deadline; read it at /v1/jobs/{job_id}"
    return openai_error(
        504, message, type="timeout", code="job_still_running", headers={**headers, "x-should-retry": "false"}
    )


def _wait_s() -> float:
    settings = app_settings()
    raw = request.headers.get(WAIT_HEADER)
    if raw is None:
        return float(settings.chat_wait_s)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= settings.chat_wait_max_s:
        raise ApiError(
            400, f"{WAIT_HEADER} must be seconds in (0, {settings.chat_wait_max_s:g}]", type="invalid_value"
        )
    return value


def _slots() -> threading.BoundedSemaphore:
    with _slots_lock:
        slots = current_app.extensions.get("llmq.chat_slots")
        if slots is None:
            slots = threading.BoundedSemaphore(app_settings().chat_max_waiting)
            current_app.extensions["llmq.chat_slots"] = slots
        return slots


@bp.errorhandler(Refused)
def _refused(exc: Refused) -> Response:
    return exc.response


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return from_api_error(exc)


@bp.errorhandler(ValidationError)
def _validation_error(exc: ValidationError) -> Response:
    return from_validation_error(exc)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return openai_error(exc.code or 500, exc.description or exc.name)


@bp.errorhandler(sqlalchemy.exc.OperationalError)
@bp.errorhandler(sqlalchemy.exc.InterfaceError)
@bp.errorhandler(sqlalchemy.exc.TimeoutError)
def _database_unavailable(exc: Exception) -> Response:
    logger.warning("database_unavailable", error=type(exc).__name__)
    return openai_error(
        503, "the database is unavailable; retry shortly", type="server_error", headers={"Retry-After": "1"}
    )


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    logger.exception("unhandled_error", error=type(exc).__name__)
    capture_exception(exc)
    return openai_error(500, "internal server error", type="server_error")
