"""One provider call for one claimed job: build the request, start the call on the process's event
loop, and turn what happened into a :class:`CallResult` or a :class:`CallFailure`. What to do after
a failure is ``policy.py``'s call."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog

from llmq.models.records import Billed, CallFailure, CallResult, ClaimedJob
from llmq.tasks import observe
from llmq.tasks.runtime import WorkerRuntime
from llmq.workers.providers import ChatMessage, ProviderError, ProviderRequest, ProviderResponse
from llmq.workers.providers.base import ProviderUsage
from llmq.workers.providers.errors import ProviderServerError, ProviderTimeoutError
from llmq.workers.providers.registry import UnknownProviderError

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CallOutcome:
    result: CallResult | None = None
    failure: CallFailure | None = None
    error: ProviderError | None = None  # the typed provider error behind ``failure``, if any
    interrupted: bool = False  # the call was cancelled: job cancelled, lease lost, or shutdown
    latency_ms: int = 0


def request_for(rt: WorkerRuntime, claim: ClaimedJob, bare_model: str, now: datetime) -> ProviderRequest:
    timeout_s = rt.settings.provider_timeout_s
    if claim.deadline_at is not None:
        timeout_s = max(0.1, min(timeout_s, (claim.deadline_at - now).total_seconds()))
    return ProviderRequest(
        model=bare_model,
        messages=tuple(
            # {"role", "content"}: a plain turn, the common case, built as it always was
            ChatMessage(role=m["role"], content=m["content"])
            if len(m) == 2 and "content" in m
            else _message(m)
            for m in claim.messages
        ),
        max_tokens=claim.max_tokens,
        temperature=claim.temperature,
        user=claim.user,
        timeout_s=timeout_s,
        options=claim.request_options,
    )


def _message(m: dict[str, Any]) -> ChatMessage:
    """A turn with more than text: an assistant's tool calls, a tool result, a name."""
    return ChatMessage(
        role=m["role"],
        content=m.get("content"),
        tool_calls=m.get("tool_calls"),
        tool_call_id=m.get("tool_call_id"),
    )


def result_extra(response: ProviderResponse) -> dict[str, Any] | None:
    """What the job's result holds besides text: tool calls, the choices of n > 1."""
    if response.tool_calls is None and response.choices is None:
        return None
    extra: dict[str, Any] = {}
    if response.tool_calls is not None:
        extra["tool_calls"] = response.tool_calls
    if response.choices is not None:
        extra["choices"] = response.choices
    return extra


@dataclass
class StartedCall:
    """A provider call running on the process's event loop. Nothing waits on it: its future's
    done-callback hands it to a finisher thread (``tasks/generate.py``)."""

    future: concurrent.futures.Future[ProviderResponse]
    started: float  # time.monotonic() at start


def start_call(
    rt: WorkerRuntime, claim: ClaimedJob, now: datetime, *, slot: tuple[str, str] | None = None
) -> StartedCall | CallOutcome:
    """Start ``claim``'s call on the event loop, or say at once why it cannot start."""
    try:
        provider, bare_model = rt.registry.resolve(claim.model)
    except UnknownProviderError as exc:
        return CallOutcome(failure=CallFailure("invalid_request", str(exc), None, None, 0, False))
    request = request_for(rt, claim, bare_model, now)
    if rt.inflight.shutting_down:
        return CallOutcome(interrupted=True)
    on_progress: Callable[[str, int], None] | None = None
    if rt.settings.stream:
        max_tokens = claim.max_tokens or rt.settings.default_max_tokens

        def report(text: str, tokens: int) -> None:
            rt.progress.report(claim.job_id, claim.lease_token, text, tokens, max_tokens)

        on_progress = observe.first_token_timer(claim.model, report)

    started = time.monotonic()
    future = rt.submit(provider.complete(request, on_progress))
    # The deadline is enforced on the loop (``with_deadline``); the lease keeper stops a call
    # that somehow outlives it by more than a few seconds.
    rt.inflight.add(
        claim.job_id, claim.lease_token, future, slot, must_end_by=started + request.timeout_s + 5.0
    )
    return StartedCall(future=future, started=started)


def outcome_of(rt: WorkerRuntime, claim: ClaimedJob, call: StartedCall) -> CallOutcome:
    """What a finished call gave. ``call.future`` must be done."""
    future = call.future
    latency_ms = int((time.monotonic() - call.started) * 1000)
    try:
        response = future.result(timeout=0)
    except concurrent.futures.CancelledError:
        if rt.inflight.overdue(claim.job_id):
            error = ProviderTimeoutError("the provider call exceeded its deadline")
            failure = CallFailure("timeout", str(error), None, None, latency_ms, True)
            return CallOutcome(failure=failure, error=error, latency_ms=latency_ms)
        return CallOutcome(interrupted=True, latency_ms=latency_ms)
    except ProviderError as exc:
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
            billed=None if exc.billed is None else _billed(rt, claim, exc.billed),
        )
        return CallOutcome(failure=failure, error=exc, latency_ms=latency_ms)
    except Exception as exc:  # a bug or an SDK surprise: record it, retry like a transient error
        logger.error("provider_call_crashed", job_id=claim.job_id, error=type(exc).__name__, exc_info=exc)
        crash = ProviderServerError(f"internal error: {type(exc).__name__}")
        failure = CallFailure("internal_error", type(exc).__name__, None, None, latency_ms, True)
        return CallOutcome(failure=failure, error=crash, latency_ms=latency_ms)
    return CallOutcome(
        result=CallResult(
            text=response.text,
            finish_reason=response.finish_reason,
            prompt_tokens=response.prompt_tokens,
            completion_tokens=response.completion_tokens,
            served_by=claim.model,
            cost_usd=cost_of(rt, claim, response),
            latency_ms=latency_ms,
            cached_tokens=response.cached_tokens,
            cache_write_tokens=response.cache_write_tokens,
            extra=result_extra(response) if claim.request_options is not None else None,
        )
    )


def cost_of(rt: WorkerRuntime, claim: ClaimedJob, usage: ProviderUsage | ProviderResponse) -> Decimal | None:
    """The one place a call is priced: the provider's reported usage, each token kind at its
    price (``workers/pricing.py``); None when the model has no price."""
    return rt.prices.cost(
        claim.model,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
    )


def _billed(rt: WorkerRuntime, claim: ClaimedJob, usage: ProviderUsage) -> Billed:
    return Billed(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost_usd=cost_of(rt, claim, usage),
    )
