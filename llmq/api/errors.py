"""JSON errors for everything: ``{"error": {"type", "message"}}`` with the right status, never an
HTML page or a traceback."""

from __future__ import annotations

from typing import Any

import sqlalchemy.exc
import structlog
from flask import Flask, Response, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from llmq.observability.sentry import capture_exception

logger = structlog.get_logger(__name__)

HTTP_ERROR_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type or HTTP_ERROR_TYPES.get(status, "error")
        self.message = message
        self.details = details
        self.headers = headers or {}  # e.g. Retry-After of a 429


def error_response(status: int, type: str, message: str, details: Any = None) -> Response:
    body: dict[str, Any] = {"type": type, "message": message}
    if details is not None:
        body["details"] = details
    response = jsonify({"error": body})
    response.status_code = status
    return response


def validation_details(exc: ValidationError) -> list[dict[str, object]]:
    return [
        {"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        response = error_response(exc.status, exc.type, exc.message, exc.details)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Response:
        details = validation_details(exc)
        first = details[0] if details else {"loc": "", "msg": "invalid"}
        where = f"{first['loc']}: " if first["loc"] else ""
        return error_response(422, "validation_error", f"{where}{first['msg']}", details)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        return error_response(status, HTTP_ERROR_TYPES.get(status, "error"), exc.description or exc.name)

    @app.errorhandler(sqlalchemy.exc.OperationalError)
    @app.errorhandler(sqlalchemy.exc.InterfaceError)
    @app.errorhandler(sqlalchemy.exc.TimeoutError)
    def _database_unavailable(exc: Exception) -> Response:
        # The database is down or out of connections: the client should retry, nothing was
        # accepted (a job is only answered 202 once its row is committed).
        logger.warning("database_unavailable", error=type(exc).__name__)
        response = error_response(503, "unavailable", "the database is unavailable; retry shortly")
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.exception("unhandled_error", error=type(exc).__name__)
        capture_exception(exc)  # answered here, so Flask's integration never sees it
        return error_response(500, "internal_error", "internal server error")
