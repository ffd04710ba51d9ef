"""Correlation at the edge: the request's ``request_id`` and, when tracing is on, the submit span.

Every request gets one ``request_id``: the client's ``X-Request-ID`` when it is a sane token (1 to
128 of letters, digits and ``._:-``; anything else is replaced, never logged), else a new one. It is
bound into structlog's context for every log line of the request and echoed in the response's
``X-Request-ID``. A submit stores it on the job (``jobs.request_id``), so that the worker's and the
webhook delivery's log lines of that job carry it too (``tasks/spans.py`` binds it there).

A submit (``POST /v1/jobs``) is also the root span of its job's trace; the job stores its
``traceparent`` (``observability/tracing.py``).
"""

from __future__ import annotations

import re
import uuid

import structlog
from flask import Flask, Response, g, request

from llmq.observability import tracing

HEADER = "X-Request-ID"
_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# The requests that make a job: each is the root span of the job's trace. A chat completion's
# span lasts as long as the call waits for its job (a stream's, until the stream starts).
_SUBMIT_ENDPOINTS = frozenset({"jobs.submit", "chat.create"})
JOB_ID_HEADER = "X-LLMQ-Job-Id"  # set by the chat completions view, whose body has no job id


def request_id_from(header: str | None) -> str:
    """The client's request id if it is a sane token, else a new one."""
    if header is not None and _VALID.match(header):
        return header
    return uuid.uuid4().hex


def current_traceparent() -> str | None:
    """The submit span's ``traceparent``, to store on the job; None when tracing is off."""
    return tracing.traceparent_of(g.get("submit_span"))


def init_correlation(app: Flask) -> None:
    @app.before_request
    def _bind_request_id() -> None:
        g.request_id = request_id_from(request.headers.get(HEADER))
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.request_id)
        if tracing.enabled() and request.endpoint in _SUBMIT_ENDPOINTS:
            g.submit_span = tracing.start_submit_span(
                dict(request.headers.items()),
                {
                    "http.request.method": request.method,
                    "url.path": request.path,
                    "llmq.request_id": g.request_id,
                },
            )

    @app.after_request
    def _return_request_id(response: Response) -> Response:
        response.headers[HEADER] = g.get("request_id", "")
        span = g.pop("submit_span", None)
        if span is not None:
            job_id = response.headers.get(JOB_ID_HEADER)
            if job_id is None and not response.is_streamed:  # never read a stream here: it would buffer it
                job_id = (response.get_json(silent=True) or {}).get("id")
            tracing.end_span(
                span,
                {"http.response.status_code": response.status_code, "llmq.job_id": job_id},
                error=None if response.status_code < 400 else f"HTTP {response.status_code}",
            )
        return response
