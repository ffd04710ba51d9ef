"""Correlation's pure parts: which X-Request-ID is kept, how a pool thread's job ids are bound and
unbound, and that with tracing off no exporter is set up
(nor llmq's OpenTelemetry code imported)."""

from __future__ import annotations

import subprocess
import sys

import structlog

from llmq.api.correlation import request_id_from
from llmq.tasks import spans


def test_a_sane_request_id_is_kept_and_anything_else_replaced() -> None:
    assert request_id_from("abc-123_x.y:z") == "abc-123_x.y:z"
    for bad in (None, "", "x" * 129, "has space", "new\nline", 'quote"', "ünï"):
        made = request_id_from(bad)
        assert made != bad and len(made) == 32


def test_job_context_binds_the_ids_and_leaves_none_behind() -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id="outer", other=1)
    with spans.job_context("job_1", None):
        assert structlog.contextvars.get_contextvars() == {"other": 1, "job_id": "job_1"}
        structlog.contextvars.bind_contextvars(request_id="from-the-claim")
    assert structlog.contextvars.get_contextvars() == {"request_id": "outer", "other": 1}
    structlog.contextvars.clear_contextvars()


def test_message_headers_carry_the_bound_request_id() -> None:
    structlog.contextvars.clear_contextvars()
    assert spans.message_headers() == {}
    with spans.job_context("job_1", "rid"):
        assert spans.message_headers() == {spans.REQUEST_ID_HEADER: "rid"}


def test_tracing_off_sets_up_no_exporter() -> None:
    code = (
        "import os, sys; os.environ.pop('OTEL_EXPORTER_OTLP_ENDPOINT', None)\n"
        "from llmq.observability import tracing\n"
        "assert tracing.init_tracing('x') is False and not tracing.enabled()\n"
        "tracing.record_span('s', '00-' + '1' * 32 + '-' + '2' * 16 + '-01', start_ns=0)\n"
        "import llmq.tasks.spans, llmq.api.correlation\n"
        # (redis-py imports OpenTelemetry's SDK by itself when it is installed; llmq's exporter no)
        "assert 'opentelemetry.exporter.otlp.proto.http.trace_exporter' not in sys.modules\n"
        "assert tracing._provider is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
