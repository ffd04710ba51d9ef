"""One job shape: the API's ``JobOut`` accepts what ``job_public`` says of any job, the two name
the same fields, and the mappings the transitions derive from the table and the records hold."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from llmq.api.schemas import JobOut
from llmq.models.finish import _BATCH_INPUTS, _RESULT_INPUTS, completed_view
from llmq.models.records import CLAIMED_COLUMNS, NEW_JOB_COLUMNS, CallResult, ClaimedJob, NewJob
from llmq.models.statements import ATTRIBUTE_OF, NEW_JOB_DEFAULTS
from llmq.models.tables import Job, job_public

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
JOB_ATTRIBUTES = [attr.key for attr in Job.__mapper__.column_attrs]


def _job(**values: Any) -> SimpleNamespace:
    """A record with every column attribute of Job, each one given."""
    assert set(values) == set(JOB_ATTRIBUTES), set(JOB_ATTRIBUTES) ^ set(values)
    return SimpleNamespace(**values)


def queued_job() -> SimpleNamespace:
    """Just submitted: every nullable column null."""
    return _job(
        **{
            **dict.fromkeys(JOB_ATTRIBUTES),
            **NEW_JOB_DEFAULTS,
            "id": "job_1",
            "tenant_id": "ten_1",
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "metadata_": {},
            "created_at": NOW,
            "updated_at": NOW,
        }
    )


def completed_job() -> SimpleNamespace:
    """Completed after a failed attempt: result, usage, cost and the earlier error all set."""
    return _job(
        id="job_2",
        tenant_id="ten_1",
        status="completed",
        model="auto",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=64,
        temperature=0.0,
        end_user="u-1",
        webhook_url="https://example.com/hook",
        metadata_={"k": "v"},
        idempotency_key="key-1",
        request_fingerprint="f" * 64,
        max_attempts=5,
        deadline_at=NOW + timedelta(minutes=5),
        fallbacks=["anthropic/claude-3-haiku"],
        use_cache=True,
        degraded_ok=True,
        priority="bulk",
        api_key_id="key_1",
        budget_wait=True,
        request_id="req-1",
        traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        batch_id="batch_1",
        current_model="openai/gpt-4o-mini",
        model_attempts=2,
        attempts=2,
        progress=1.0,
        served_by="openai/gpt-4o-mini",
        route_reason="short prompt",
        partial_text="hel",
        cached=False,
        degraded=True,
        result_text="hello",
        finish_reason="tool_calls",
        result_extra={
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
            "choices": [
                {
                    "index": 0,
                    "text": "hello",
                    "finish_reason": "tool_calls",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"index": 1, "text": "hi", "finish_reason": "stop", "tool_calls": None},
            ],
        },
        request_options={"tools": [{"type": "function", "function": {"name": "f"}}], "n": 2},
        prompt_tokens=3,
        completion_tokens=2,
        total_tokens=5,
        cached_tokens=1,
        cache_write_tokens=0,
        cost_usd=Decimal("0.00001234"),
        provider_batch_id="pb_1",
        via_batch=True,
        batch_saved_usd=Decimal("0.00001234"),
        error_type="rate_limited",
        error_message="slow down",
        lease_token="lease_1",
        lease_expires_at=NOW,
        next_attempt_at=NOW,
        wait_reason="rate_limit",
        enqueued_at=NOW,
        created_at=NOW,
        started_at=NOW,
        completed_at=NOW + timedelta(seconds=1),
        updated_at=NOW + timedelta(seconds=1),
    )


@pytest.mark.parametrize("job", [queued_job(), completed_job()], ids=["queued", "completed"])
def test_job_out_validates_job_public(job: SimpleNamespace) -> None:
    public = job_public(job)
    out = JobOut.model_validate(public)
    assert out.model_dump(mode="json") == public


def test_completed_job_public_has_result_usage_and_error() -> None:
    out = JobOut.model_validate(job_public(completed_job()))
    assert out.result is not None and out.result.text == "hello"
    assert out.usage is not None and out.usage.total_tokens == 5
    assert out.error is not None and out.error.type == "rate_limited"


def test_job_public_and_job_out_name_the_same_fields() -> None:
    for job in (queued_job(), completed_job()):
        assert set(job_public(job)) == set(JobOut.model_fields)


def _claim() -> ClaimedJob:
    return ClaimedJob(
        job_id="job_3",
        tenant_id="ten_1",
        lease_token="lease_1",
        attempt_number=1,
        max_attempts=5,
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=None,
        temperature=None,
        user="u-1",
        deadline_at=None,
        requested_model="auto",
        current_model="openai/gpt-4o-mini",
        webhook_url="https://example.com/hook",
        metadata={"k": "v"},
        created_at=NOW,
        started_at=NOW,
    )


def test_completed_view_is_a_job_job_out_accepts() -> None:
    result = CallResult("hello", "stop", 3, 2, served_by="openai/gpt-4o-mini", cost_usd=None, latency_ms=1)
    view = completed_view(_claim(), result, NOW)
    assert set(vars(view)) == set(JOB_ATTRIBUTES)
    out = JobOut.model_validate(job_public(view))
    assert (out.status, out.model, out.attempts, out.metadata) == ("completed", "auto", 1, {"k": "v"})
    assert view.end_user == "u-1" and view.total_tokens == 5


def test_claimed_columns_are_job_columns_read_by_field() -> None:
    assert CLAIMED_COLUMNS["attempt_number"] == "attempts"
    assert CLAIMED_COLUMNS["requested_model"] == "model"
    assert ATTRIBUTE_OF[CLAIMED_COLUMNS["user"]] == "end_user"
    assert ATTRIBUTE_OF[CLAIMED_COLUMNS["metadata"]] == "metadata_"
    given_by_claim = {f.name for f in fields(ClaimedJob)} - set(CLAIMED_COLUMNS)
    assert given_by_claim == {"job_id", "lease_token", "model", "worker", "attempt_opened"}


def test_new_job_fields_are_columns_but_the_timeout() -> None:
    assert {f.name for f in fields(NewJob)} - set(NEW_JOB_COLUMNS) == {"timeout_s"}
    assert NEW_JOB_DEFAULTS == {
        "status": "queued",
        "max_attempts": 5,
        "degraded_ok": False,
        "model_attempts": 0,
        "attempts": 0,
        "progress": 0.0,
        "cached": False,
        "degraded": False,
        "priority": "interactive",
        "budget_wait": False,
        "via_batch": False,
    }


def test_fingerprint_covers_every_field() -> None:
    base = NewJob(model="openai/a", messages=[{"role": "user", "content": "hi"}])
    changed = {
        "model": "openai/b",
        "messages": [],
        "max_tokens": 1,
        "temperature": 0.5,
        "user": "u",
        "webhook_url": "https://x",
        "metadata": {"a": "b"},
        "timeout_s": 1.0,
        "fallbacks": ["openai/c"],
        "use_cache": False,
        "degraded_ok": True,
        "priority": "bulk",
        "budget_wait": True,
        "request_options": {"seed": 1},
        "batch_id": "batch_1",
    }
    assert set(changed) == {f.name for f in fields(NewJob)}
    prints = {NewJob(**{**vars(base), name: value}).fingerprint() for name, value in changed.items()}
    assert len(prints) == len(changed) and base.fingerprint() not in prints


def test_fingerprint_is_unchanged() -> None:
    """Stored fingerprints (Idempotency-Key replays) stay valid: the hash of a known request."""
    new = NewJob(model="m", messages=[{"role": "user", "content": "x"}], metadata={"a": "b"}, timeout_s=3.0)
    assert new.fingerprint() == "67f493eb2fc8d9b0883fc0f803bf1531581fa99ab2f9fbb71584b43aeb4de21a"


def test_batch_inputs_hold_the_result_columns() -> None:
    assert set(_RESULT_INPUTS) <= set(_BATCH_INPUTS)
