"""Errors of ``/v1/chat/completions`` in OpenAI's shape, so the official SDK raises the class it
would raise against OpenAI::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "messages.[0].role",
               "code": null}}

    400 BadRequestError         an invalid or unsupported request; a job the provider refused
    401 AuthenticationError     no key, unknown, revoked or expired key
    403 PermissionDeniedError   a disabled tenant, a model the key may not use
    404 NotFoundError           an unknown model (code ``model_not_found``)
    409 ConflictError           the job was cancelled, an Idempotency-Key reused with another body
    422 UnprocessableEntityError a request llmq understood and cannot do (a provider cannot do it)
    429 RateLimitError          over the key's rate (``rate_limit_exceeded``, with Retry-After; the
                                SDK retries it) or its budget (``insufficient_quota``; it does not)
    502/504 InternalServerError the job failed at the provider, or is still running at the deadline

Once a job exists, every error says its id (``X-LLMQ-Job-Id``) and carries ``x-should-retry:
false``: llmq already retried the provider, and the SDK's retry would start a second job.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from pydantic import ValidationError

from llmq.api.chat_schemas import UNSUPPORTED_FIELDS
from llmq.api.errors import ApiError

# llmq's error types (ApiError.type) → OpenAI's (type, code).
_API_TYPES: dict[str, tuple[str, str | None]] = {
    "unauthorized": ("invalid_request_error", "invalid_api_key"),
    "key_revoked": ("invalid_request_error", "invalid_api_key"),
    "key_expired": ("invalid_request_error", "invalid_api_key"),
    "tenant_disabled": ("invalid_request_error", "account_deactivated"),
    "model_not_allowed": ("invalid_request_error", "model_not_allowed"),
    "rate_limited": ("requests", "rate_limit_exceeded"),
    "chat_capacity": ("requests", "too_many_waiting_requests"),  # the process's waiting slots
    "idempotency_conflict": ("invalid_request_error", "idempotency_conflict"),
    "unavailable": ("server_error", None),
}

# A failed job's error.type → (status, OpenAI type, code).
_JOB_ERRORS: dict[str, tuple[int, str, str | None]] = {
    "invalid_request": (400, "invalid_request_error", None),
    "context_length": (400, "invalid_request_error", "context_length_exceeded"),
    "content_policy": (400, "invalid_request_error", "content_policy_violation"),
    "invalid_json_output": (502, "api_error", "invalid_json_output"),  # after llmq's retries
    "not_found": (404, "invalid_request_error", "model_not_found"),
    "budget_exceeded": (429, "insufficient_quota", "insufficient_quota"),
    "quota_exceeded": (429, "insufficient_quota", "insufficient_quota"),
    "rate_limit": (429, "requests", "rate_limit_exceeded"),
    "cancelled": (409, "invalid_request_error", "job_cancelled"),
    "timeout": (504, "timeout", "timeout"),
    "deadline": (504, "timeout", "timeout"),
    "auth": (502, "api_error", "provider_auth_failed"),
}


class Refused(Exception):
    """A refusal already shaped as OpenAI's error; the blueprint answers with its response."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def openai_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    response = jsonify({"error": {"message": message, "type": type, "param": param, "code": code}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def from_api_error(exc: ApiError) -> Response:
    """A refusal of the shared code (auth, limits, submit) in OpenAI's shape."""
    type_, code = _API_TYPES.get(
        exc.type, ("invalid_request_error" if exc.status < 500 else "server_error", None)
    )
    headers = dict(exc.headers)
    if exc.status == 409:  # the SDK retries a 409 (a lock timeout at OpenAI); here it would fail again
        headers["x-should-retry"] = "false"
    return openai_error(exc.status, exc.message, type=type_, code=code or exc.type, headers=headers)


# The tags pydantic puts in the location of a discriminated union's member (a message's role, a
# content part's or response_format's type): not part of the param as the client wrote it.
_UNION_TAGS = {
    "messages": {"system", "user", "assistant", "tool"},
    "content": {"text", "image_url"},
}
_FORMAT_TAGS = {"text", "json_object", "json_schema"}


_TYPE_LABELS = {"str", "int", "float", "bool", "none", "list", "dict"}


def _is_type_label(part: int | str) -> bool:
    """A union member's label pydantic puts in a location (``str``, ``constrained-str``,
    ``list[...]``, a model's class name): OpenAI's field names are all lower-case words."""
    return isinstance(part, str) and (
        part in _TYPE_LABELS or "[" in part or "-" in part or part[:1].isupper()
    )


def param_of(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as OpenAI writes a param: ``messages.[0].content``."""
    kept: list[int | str] = []
    loc = tuple(p for p in loc if not _is_type_label(p))
    for i, part in enumerate(loc):
        if i >= 2 and isinstance(loc[i - 1], int) and part in _UNION_TAGS.get(str(loc[i - 2]), ()):
            continue
        if i >= 1 and loc[i - 1] == "response_format" and part in _FORMAT_TAGS:
            continue
        kept.append(part)
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in kept)


def from_validation_error(exc: ValidationError, *, job: bool = False) -> Response:
    """A request OpenAI would refuse with 400; ``job`` True: raised by the job's own schema, so an
    unknown field there is one the chat request passed and a job cannot carry."""
    errors = exc.errors(include_url=False, include_input=False)
    # Of a union's errors (one per member), the deepest says most: the member the input meant.
    first = max(errors, key=lambda e: len([p for p in e["loc"] if not _is_type_label(p)]))
    loc = tuple(first["loc"])
    param = param_of(loc)
    if first["type"] == "extra_forbidden":
        name = str(loc[-1])
        if job or name in UNSUPPORTED_FIELDS:
            message = f"llmq does not support the parameter {param!r}"
            return openai_error(400, message, param=param, code="unsupported_parameter")
        return openai_error(400, f"Unrecognized request argument supplied: {param}", param=param)
    if first["type"] == "missing":
        return openai_error(
            400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    message = f"Invalid value for '{param}': {first['msg']}" if param else first["msg"]
    return openai_error(400, message, param=param or None, code="invalid_value")


def job_error_body(job: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error object of a job that ended without a result."""
    error = job.get("error") or {
        "type": "cancelled" if job["status"] == "cancelled" else "error",
        "message": "",
    }
    status, type_, code = _JOB_ERRORS.get(error["type"], (502, "api_error", error["type"]))
    message = f"{error['message'] or error['type']} (job {job['id']}, {job['attempts']} attempt(s))"
    return status, {"message": message, "type": type_, "param": None, "code": code}


def from_failed_job(job: dict[str, Any], headers: dict[str, str]) -> Response:
    """The answer for a job that ended without a result (failed or cancelled)."""
    status, body = job_error_body(job)
    response = jsonify({"error": body})
    response.status_code = status
    response.headers.update({**headers, "x-should-retry": "false"})
    return response
