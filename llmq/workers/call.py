"""One provider call for one claimed job: build the request, call, and turn what happened into a
:class:`CallResult` or a :class:`CallFailure`. What to do after a failure is ``policy.py``'s call."""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import structlog

from llmq.models.transitions import CallFailure, CallResult, ClaimedJob
from llmq.workers.providers import ChatMessage, ProviderError, ProviderRequest
from llmq.workers.providers.errors import ProviderServerError, ProviderTimeoutError
from llmq.workers.providers.registry import UnknownProviderError
from llmq.workers.runtime import WorkerRuntime

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CallOutcome:
    result: CallResult | None = None
    failure: CallFailure | None = None
    error: ProviderError | None = None  # the typed provider error behind ``failure``, if any
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


def call_provider(
    rt: WorkerRuntime, claim: ClaimedJob, now: datetime, *, slot: tuple[str, str] | None = None
) -> CallOutcome:
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
    rt.inflight.add(claim.job_id, claim.lease_token, future, slot)
    try:
        response = future.result(timeout=request.timeout_s + 5.0)
    except concurrent.futures.CancelledError:
        return CallOutcome(interrupted=True, latency_ms=int((time.monotonic() - started) * 1000))
    except ProviderError as exc:
        latency_ms = int((time.monotonic() - started) * 1000)
        logger.info(
            "provider_call_failed",
            job_id=claim.job_id,
            attempt=claim.attempt_number,
            model=claim.model,
            error_type=exc.error_type,
            http_status=exc.status_code,
        )
        failure = CallFailure(
            error_type=exc.error_type,
            message=str(exc),
            http_status=exc.status_code,
            retry_after_s=getattr(exc, "retry_after_s", None),
            latency_ms=latency_ms,
            retryable=exc.retryable,
        )
        return CallOutcome(failure=failure, error=exc, latency_ms=latency_ms)
    except TimeoutError:
        future.cancel()
        latency_ms = int((time.monotonic() - started) * 1000)
        error = ProviderTimeoutError("the provider call exceeded its deadline")
        failure = CallFailure("timeout", str(error), None, None, latency_ms, True)
        return CallOutcome(failure=failure, error=error, latency_ms=latency_ms)
    except Exception as exc:  # a bug or an SDK surprise: record it, retry like a transient error
        logger.exception("provider_call_crashed", job_id=claim.job_id, error=type(exc).__name__)
        latency_ms = int((time.monotonic() - started) * 1000)
        crash = ProviderServerError(f"internal error: {type(exc).__name__}")
        failure = CallFailure("internal_error", type(exc).__name__, None, None, latency_ms, True)
        return CallOutcome(failure=failure, error=crash, latency_ms=latency_ms)
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


def _decimal(value: float) -> Decimal:
    from decimal import Decimal

    return Decimal(str(value))
