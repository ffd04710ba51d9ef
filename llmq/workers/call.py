"""One provider call for one claimed job: build the request, call, and turn what happened into a
:class:`CallResult` or a :class:`CallFailure` (with the delay before a retry, if any)."""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import structlog

from llmq.models.base import utcnow
from llmq.models.transitions import CallFailure, CallResult, ClaimedJob
from llmq.workers.providers import ChatMessage, ProviderError, ProviderRequest
from llmq.workers.providers.registry import UnknownProviderError
from llmq.workers.retry import next_retry_delay, should_retry
from llmq.workers.runtime import WorkerRuntime

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CallOutcome:
    result: CallResult | None = None
    failure: CallFailure | None = None
    retry_in_s: float | None = None  # set when the failure is to be retried
    interrupted: bool = False  # the call was cancelled: job cancelled, lease lost, or shutdown
    latency_ms: int = 0


def _request_for(rt: WorkerRuntime, claim: ClaimedJob, bare_model: str, now: datetime) -> ProviderRequest:
    timeout_s = rt.settings.provider_timeout_s
    if claim.deadline_at is not None:
        timeout_s = max(0.1, min(timeout_s, (claim.deadline_at - now).total_seconds()))
    return ProviderRequest(
        model=bare_model,
        messages=tuple(ChatMessage(role=m["role"], content=m["content"]) for m in claim.messages),
        max_tokens=claim.max_tokens,
        temperature=claim.temperature,
        user=claim.user,
        timeout_s=timeout_s,
    )


def call_provider(rt: WorkerRuntime, claim: ClaimedJob, now: datetime) -> CallOutcome:
    started = time.monotonic()
    try:
        provider, bare_model = rt.registry.resolve(claim.model)
    except UnknownProviderError as exc:
        return CallOutcome(failure=CallFailure("invalid_request", str(exc), None, None, 0, False))
    request = _request_for(rt, claim, bare_model, now)
    if rt.inflight.shutting_down:
        return CallOutcome(interrupted=True)
    on_progress = None
    if rt.settings.stream:
        max_tokens = claim.max_tokens or rt.settings.default_max_tokens

        def on_progress(text: str, tokens: int) -> None:
            rt.progress.report(claim.job_id, claim.lease_token, text, tokens, max_tokens)

    future = rt.submit(provider.complete(request, on_progress))
    rt.inflight.add(claim.job_id, claim.lease_token, future)
    try:
        response = future.result(timeout=request.timeout_s + 5.0)
    except concurrent.futures.CancelledError:
        return CallOutcome(interrupted=True, latency_ms=int((time.monotonic() - started) * 1000))
    except ProviderError as exc:
        latency_ms = int((time.monotonic() - started) * 1000)
        failure = CallFailure(
            error_type=exc.error_type,
            message=str(exc),
            http_status=exc.status_code,
            retry_after_s=getattr(exc, "retry_after_s", None),
            latency_ms=latency_ms,
            retryable=exc.retryable,
        )
        retry_in = None
        if _past(claim.deadline_at):
            failure = CallFailure(
                "timeout",
                f"the job's deadline passed; last error: {exc}"[:2000],
                exc.status_code,
                failure.retry_after_s,
                latency_ms,
                False,
            )
        elif should_retry(exc, claim.attempt_number, claim.max_attempts):
            retry_in = next_retry_delay(
                exc,
                claim.attempt_number,
                base_s=rt.settings.retry_base_s,
                cap_s=rt.settings.retry_cap_s,
            )
            if claim.deadline_at is not None and (claim.deadline_at - utcnow()).total_seconds() < retry_in:
                retry_in = None  # the job's deadline comes before the retry: it fails now, timed out
                failure = CallFailure(
                    error_type="timeout",
                    message=f"the job's deadline comes before its next attempt; last error: {exc}"[:2000],
                    http_status=exc.status_code,
                    retry_after_s=failure.retry_after_s,
                    latency_ms=latency_ms,
                    retryable=False,
                )
        logger.info(
            "provider_call_failed",
            job_id=claim.job_id,
            attempt=claim.attempt_number,
            error_type=exc.error_type,
            http_status=exc.status_code,
            retry_in_s=retry_in,
        )
        return CallOutcome(failure=failure, retry_in_s=retry_in)
    except TimeoutError:
        future.cancel()
        latency_ms = int((time.monotonic() - started) * 1000)
        failure = CallFailure("timeout", "provider call exceeded its deadline", None, None, latency_ms, True)
        retry_in = None
        if claim.attempt_number < claim.max_attempts and not _past(claim.deadline_at):
            retry_in = rt.settings.retry_base_s
        return CallOutcome(failure=failure, retry_in_s=retry_in)
    except Exception as exc:  # a bug or an SDK surprise: record it, retry like a transient error
        logger.exception("provider_call_crashed", job_id=claim.job_id, error=type(exc).__name__)
        latency_ms = int((time.monotonic() - started) * 1000)
        failure = CallFailure("internal_error", type(exc).__name__, None, None, latency_ms, True)
        retry_in = None
        if claim.attempt_number < claim.max_attempts and not _past(claim.deadline_at):
            retry_in = rt.settings.retry_base_s
        return CallOutcome(failure=failure, retry_in_s=retry_in)
    finally:
        rt.inflight.remove(claim.job_id)
        rt.progress.forget(claim.job_id)
    latency_ms = int((time.monotonic() - started) * 1000)
    cost = rt.prices.cost_usd(claim.model, response.prompt_tokens, response.completion_tokens)
    return CallOutcome(
        result=CallResult(
            text=response.text,
            finish_reason=response.finish_reason,
            prompt_tokens=response.prompt_tokens,
            completion_tokens=response.completion_tokens,
            served_by=claim.model,
            cost_usd=None if cost is None else _decimal(cost),
            latency_ms=latency_ms,
        )
    )


def _past(deadline: datetime | None) -> bool:
    return deadline is not None and deadline <= utcnow()


def _decimal(value: float) -> Decimal:
    from decimal import Decimal

    return Decimal(str(value))
