"""What the tasks' metric calls record (``tasks/observe.py`` into ``workers/metrics.py``), the
switch that turns them off for an A/B of their cost, and the bound on the parked-jobs count."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.dialects import postgresql

from llmq.models.records import Billed, CallFailure, CallResult, ClaimedJob
from llmq.models.stats import parked_jobs
from llmq.tasks import observe
from llmq.tasks.call import CallOutcome
from llmq.webhooks.sender import DeliveryOutcome
from llmq.workers import metrics

MODEL = "local/unit-metrics"


def _claim(tenant: str = "ten_unit") -> ClaimedJob:
    return ClaimedJob(
        job_id="job_x",
        tenant_id=tenant,
        lease_token="t",
        attempt_number=1,
        max_attempts=3,
        model=MODEL,
        messages=[],
        max_tokens=None,
        temperature=None,
        user=None,
        deadline_at=None,
    )


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(autouse=True)
def metrics_on() -> Iterator[None]:
    metrics.set_enabled(True)
    yield
    metrics.set_enabled(True)


def _success() -> CallOutcome:
    result = CallResult(
        text="hi",
        finish_reason="stop",
        prompt_tokens=10,
        completion_tokens=4,
        served_by=MODEL,
        cost_usd=Decimal("0.0005"),
        latency_ms=250,
        cached_tokens=6,
    )
    return CallOutcome(result=result, latency_ms=250)


def test_a_successful_call_counts_its_duration_tokens_and_cost() -> None:
    before = {
        "calls": _value("llmq_provider_call_duration_seconds_count", model=MODEL, outcome="success"),
        "input": _value("llmq_provider_tokens_total", model=MODEL, type="input"),
        "cached": _value("llmq_provider_tokens_total", model=MODEL, type="cached"),
        "cost": _value("llmq_provider_cost_usd_total", tenant_id="ten_unit", model=MODEL),
    }
    observe.call_ended(_claim(), _success())
    assert (
        _value("llmq_provider_call_duration_seconds_count", model=MODEL, outcome="success")
        == before["calls"] + 1
    )
    assert _value("llmq_provider_tokens_total", model=MODEL, type="input") == before["input"] + 10
    assert _value("llmq_provider_tokens_total", model=MODEL, type="cached") == before["cached"] + 6
    assert _value("llmq_provider_cost_usd_total", tenant_id="ten_unit", model=MODEL) == pytest.approx(
        before["cost"] + 0.0005
    )


def test_a_billed_failure_counts_its_error_type_and_its_tokens() -> None:
    billed = Billed(
        prompt_tokens=7, completion_tokens=0, cached_tokens=0, cache_write_tokens=0, cost_usd=None
    )
    failure = CallFailure("stream_error", "cut", None, None, 100, True, billed=billed)
    before = _value("llmq_attempts_total", model=MODEL, outcome="stream_error")
    tokens = _value("llmq_provider_tokens_total", model=MODEL, type="input")
    observe.call_ended(_claim(), CallOutcome(failure=failure, latency_ms=100))
    observe.step_recorded("retry", CallOutcome(failure=failure))
    assert _value("llmq_attempts_total", model=MODEL, outcome="stream_error") == before + 1
    assert _value("llmq_provider_tokens_total", model=MODEL, type="input") == tokens + 7
    assert _value("llmq_retries_total", error_type="stream_error", kind="retry") >= 1


def test_off_records_nothing() -> None:
    metrics.set_enabled(False)
    before = _value("llmq_attempts_total", model=MODEL, outcome="success")
    ended = _value("llmq_jobs_ended_total", status="completed", how="answered")
    observe.call_ended(_claim(), _success())
    observe.job_ended("completed", "answered")
    observe.delivery_made(DeliveryOutcome(success=True, status_code=200, latency_ms=5, error=None))
    assert _value("llmq_attempts_total", model=MODEL, outcome="success") == before
    assert _value("llmq_jobs_ended_total", status="completed", how="answered") == ended
    assert metrics.serve_metrics(9, lambda: 0) is False  # and no server starts


def test_time_to_first_token_is_observed_once_per_stream() -> None:
    seen: list[int] = []
    before = _value("llmq_provider_time_to_first_token_seconds_count", model=MODEL)
    timed = observe.first_token_timer(MODEL, lambda _text, pieces: seen.append(pieces))
    for pieces in (1, 2, 3):
        timed("x" * pieces, pieces)
    assert seen == [1, 2, 3]
    assert _value("llmq_provider_time_to_first_token_seconds_count", model=MODEL) == before + 1


def test_deliveries_are_counted_by_outcome() -> None:
    before = _value("llmq_webhook_deliveries_total", outcome="rejected")
    outcome = DeliveryOutcome(success=False, status_code=None, latency_ms=0, error="blocked", stop=True)
    assert observe.delivery_made(outcome) is outcome
    assert _value("llmq_webhook_deliveries_total", outcome="rejected") == before + 1


def test_the_parked_count_reads_a_bounded_number_of_rows() -> None:
    captured: list[str] = []

    class Session:
        def execute(self, statement: object) -> object:
            captured.append(str(statement.compile(dialect=postgresql.dialect())))  # type: ignore[attr-defined]

            class Rows:
                def all(self) -> list[object]:
                    return []

            return Rows()

    parked_jobs(Session(), cap=500)  # type: ignore[arg-type]
    assert "LIMIT" in captured[0] and "GROUP BY" in captured[0] and "status" in captured[0]
