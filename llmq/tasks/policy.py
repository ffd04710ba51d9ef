"""What a job does after a failed call: retry the same model, move to a fallback, answer with the
degraded template, or fail — and when.

::

    deadline passed ─────────────────────────────────────────────▶ fail (timeout)
    context window exceeded ─▶ a fallback with a larger window? ──▶ fallback now │ fail
    content policy ──▶ the model allows fallback on refusals? ────▶ fallback now │ fail
    transient (429, 5xx, 529, timeout, dropped) ─▶ attempts left on this model? ─▶ retry after backoff
                                                  └▶ a fallback left? ──────────▶ fallback now
                                                  └▶ the job asked degraded_ok? ─▶ degraded answer │ fail
    any other permanent error (400, 401, 403, 404) ──────────────────────────────▶ fail
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from llmq.models.base import utcnow
from llmq.models.records import CallFailure, ClaimedJob
from llmq.tasks.runtime import WorkerRuntime
from llmq.workers.providers.errors import (
    ContentPolicyError,
    ContextLengthError,
    ProviderError,
    TransientError,
)
from llmq.workers.retry import next_retry_delay, should_retry
from llmq.workers.routing import larger_window_fallback

StepKind = Literal["retry", "fallback", "degrade", "fail"]


@dataclass(frozen=True)
class NextStep:
    kind: StepKind
    failure: CallFailure
    delay_s: float = 0.0
    model: str | None = None  # the fallback to move to
    wait_reason: str | None = None


def after_failure(
    rt: WorkerRuntime, claim: ClaimedJob, failure: CallFailure, error: ProviderError | None, chain: list[str]
) -> NextStep:
    remaining = chain[chain.index(claim.model) + 1 :] if claim.model in chain else []
    deadline_left = None
    if claim.deadline_at is not None:
        deadline_left = (claim.deadline_at - utcnow()).total_seconds()
        if deadline_left <= 0:
            return NextStep("fail", _timed_out(failure, "the job's deadline passed"))

    if isinstance(error, ContextLengthError):
        bigger = (
            larger_window_fallback(remaining, rt.providers, failed_model=claim.model) if remaining else None
        )
        if bigger is not None:
            return NextStep("fallback", failure, model=bigger, wait_reason="fallback")
        return NextStep("fail", failure)
    if isinstance(error, ContentPolicyError):
        config = rt.providers.model(claim.model)
        if remaining and config is not None and config.fallback_on_content_policy:
            return NextStep("fallback", failure, model=remaining[0], wait_reason="fallback")
        return NextStep("fail", failure)
    if error is None or not isinstance(error, TransientError):
        return NextStep("fail", failure)

    if should_retry(error, claim.model_attempts, claim.max_attempts):  # attempts on this model
        delay = next_retry_delay(
            error, claim.model_attempts, base_s=rt.settings.retry_base_s, cap_s=rt.settings.retry_cap_s
        )
        if deadline_left is not None and delay >= deadline_left:
            return NextStep("fail", _timed_out(failure, "the job's deadline comes before its next attempt"))
        reason = "rate_limited" if failure.error_type == "rate_limit" else "retry_backoff"
        return NextStep("retry", failure, delay_s=delay, wait_reason=reason)
    if remaining:
        return NextStep("fallback", failure, model=remaining[0], wait_reason="fallback")
    if claim.degraded_ok:
        return NextStep("degrade", failure)
    return NextStep("fail", failure)


def _timed_out(failure: CallFailure, why: str) -> CallFailure:
    return replace(
        failure,
        error_type="timeout",
        message=f"{why}; last error: {failure.error_type}: {failure.message}"[:2000],
        retryable=False,
    )
