"""When to try a failed provider call again, and how long to wait first.

The SDKs' own retries are off (``max_retries=0``), so every attempt is llmq's, counted and
recorded. The policy is three pure functions rather than a retry library such as tenacity:
tenacity drives a loop around a call inside one process, while our attempts span Celery task
executions — the task fails, the attempt is written to the database, and the job is scheduled
again (a Celery countdown, or parked in the database for long waits) — so the state between
attempts lives in the database, not in a retry loop. What is left to decide is a number of
seconds, which is what these functions return.

The backoff is the "full jitter" formula from the AWS Architecture Blog's "Exponential Backoff
and Jitter": ``sleep = uniform(0, min(cap, base * 2 ** (attempt - 1)))``. Spreading retries
over the whole window is what breaks up a thundering herd after an outage.

A ``Retry-After`` from the provider wins over the formula: it is a floor, honoured whatever its
length (a provider asking for an hour gets an hour, not ``cap_s``), plus a small jitter so that
jobs told the same instant do not all return at that instant.
"""

from __future__ import annotations

import random

from llmq.workers.providers.errors import ProviderError

__all__ = ["backoff_delay", "next_retry_delay", "should_retry"]

# 2**62 already dwarfs any cap; bounding the exponent keeps the float arithmetic finite.
_MAX_EXPONENT = 62
_RETRY_AFTER_JITTER_FRACTION = 0.1
_RETRY_AFTER_JITTER_MAX_S = 1.0


def backoff_delay(attempt: int, *, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff after failed attempt number ``attempt`` (1-based):
    uniform in ``[0, min(cap_s, base_s * 2 ** (attempt - 1))]``."""
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    if base_s < 0 or cap_s < 0:
        raise ValueError("base_s and cap_s must be non-negative")
    ceiling = min(cap_s, base_s * 2 ** min(attempt - 1, _MAX_EXPONENT))
    return _uniform(rng, ceiling)


def next_retry_delay(
    error: ProviderError,
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before the attempt after ``attempt``.

    With a ``retry_after_s`` on the error: that value plus a jitter in
    ``[0, min(1.0, 0.1 * retry_after_s)]`` — never less than asked, and not capped by ``cap_s``.
    Otherwise :func:`backoff_delay`.
    """
    retry_after = error.retry_after_s
    if retry_after is not None:
        retry_after = max(0.0, retry_after)
        spread = min(_RETRY_AFTER_JITTER_MAX_S, _RETRY_AFTER_JITTER_FRACTION * retry_after)
        return retry_after + _uniform(rng, spread)
    return backoff_delay(attempt, base_s=base_s, cap_s=cap_s, rng=rng)


def _uniform(rng: random.Random | None, high: float) -> float:
    # The module-level generator when none is given: it is reseeded in each forked worker.
    return rng.uniform(0.0, high) if rng is not None else random.uniform(0.0, high)


def should_retry(error: ProviderError, attempt: int, max_attempts: int) -> bool:
    """True when ``error`` is transient and attempt number ``attempt`` (1-based, the one that
    just failed) was not the last one allowed."""
    return error.retryable and attempt < max_attempts
