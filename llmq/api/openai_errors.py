"""Errors of the OpenAI-compatible endpoints in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}`` (a superset of llmq's ``{"type", "message"}``),
so the official SDKs raise their usual ``BadRequestError``, ``NotFoundError``, … with the message."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from pydantic import ValidationError

from llmq.api.errors import ApiError, validation_details


def openai_error(status: int, type: str, message: str, param: str | None = None) -> Response:
    response = jsonify({"error": {"message": message, "type": type, "param": param, "code": type}})
    response.status_code = status
    return response


def use_openai_errors(bp: Blueprint) -> None:
    @bp.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        response = openai_error(exc.status, exc.type, exc.message)
        response.headers.update(exc.headers)
        return response

    @bp.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Response:
        details = validation_details(exc)
        first = details[0] if details else {"loc": "", "msg": "invalid"}
        param = str(first["loc"]) or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        return openai_error(400, "invalid_request_error", message, param)
