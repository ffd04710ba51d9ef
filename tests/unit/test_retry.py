"""Retry policy: full-jitter backoff, Retry-After as a floor, and which errors are retried."""

from __future__ import annotations

import email.utils
import random

import pytest

from llmq.workers.providers.errors import (
    AuthError,
    ContentPolicyError,
    ContextLengthError,
    InvalidRequestError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderStreamError,
    ProviderTimeoutError,
    QuotaExceededError,
    RateLimitedError,
    parse_retry_after,
)
from llmq.workers.retry import backoff_delay, next_retry_delay, should_retry

BASE = 1.0
CAP = 60.0


@pytest.mark.parametrize("attempt", range(1, 12))
def test_backoff_stays_within_the_full_jitter_window(attempt: int) -> None:
    rng = random.Random(1234)
    ceiling = min(CAP, BASE * 2 ** (attempt - 1))
    delays = [backoff_delay(attempt, base_s=BASE, cap_s=CAP, rng=rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter uses the whole window, not just its top or bottom.
    assert min(delays) < 0.1 * ceiling
    assert max(delays) > 0.9 * ceiling


def test_backoff_window_doubles_per_attempt_until_the_cap() -> None:
    rng = random.Random(7)
    means = []
    for attempt in range(1, 10):
        samples = [backoff_delay(attempt, base_s=BASE, cap_s=CAP, rng=rng) for _ in range(2000)]
        means.append(sum(samples) / len(samples))
    # Mean of uniform(0, c) is c/2: 0.5, 1, 2, 4, 8, 16, 30 (capped), 30, 30.
    expected = [min(CAP, BASE * 2 ** (a - 1)) / 2 for a in range(1, 10)]
    for got, want in zip(means, expected, strict=True):
        assert got == pytest.approx(want, rel=0.1)
    assert means[1] > means[0] * 1.6
    assert means[5] > means[4] * 1.6


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = [backoff_delay(3, base_s=BASE, cap_s=CAP, rng=random.Random(42)) for _ in range(3)]
    assert first[0] == first[1] == first[2]


def test_backoff_with_a_huge_attempt_number_is_capped_not_overflowing() -> None:
    delay = backoff_delay(10_000, base_s=BASE, cap_s=CAP, rng=random.Random(1))
    assert 0.0 <= delay <= CAP


def test_backoff_attempt_is_one_based() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, base_s=BASE, cap_s=CAP)


def test_backoff_without_rng_uses_the_module_generator() -> None:
    assert 0.0 <= backoff_delay(2, base_s=BASE, cap_s=CAP) <= 2.0


def test_error_without_retry_after_uses_backoff() -> None:
    error = ProviderServerError("boom", status_code=500)
    delay = next_retry_delay(error, 3, base_s=BASE, cap_s=CAP, rng=random.Random(5))
    assert delay == backoff_delay(3, base_s=BASE, cap_s=CAP, rng=random.Random(5))


@pytest.mark.parametrize("retry_after", [0.5, 3.0, 30.0, 59.0])
def test_retry_after_is_a_floor_with_small_jitter(retry_after: float) -> None:
    error = RateLimitedError("slow down", status_code=429, retry_after_s=retry_after)
    rng = random.Random(99)
    delays = [next_retry_delay(error, 1, base_s=BASE, cap_s=CAP, rng=rng) for _ in range(300)]
    jitter = min(1.0, 0.1 * retry_after)
    assert all(retry_after <= d <= retry_after + jitter for d in delays)
    assert max(delays) > retry_after  # some jitter is added


def test_retry_after_of_hours_is_honoured_beyond_the_cap() -> None:
    error = RateLimitedError("daily limit", status_code=429, retry_after_s=3 * 3600.0)
    delay = next_retry_delay(error, 5, base_s=BASE, cap_s=CAP, rng=random.Random(0))
    assert 3 * 3600.0 <= delay <= 3 * 3600.0 + 1.0


def test_retry_after_on_an_overloaded_server_error_is_honoured() -> None:
    error = ProviderServerError("overloaded", status_code=529, retry_after_s=20.0)
    delay = next_retry_delay(error, 1, base_s=BASE, cap_s=CAP, rng=random.Random(0))
    assert 20.0 <= delay <= 21.0


def test_retry_after_ms_header_becomes_the_floor() -> None:
    retry_after = parse_retry_after({"retry-after-ms": "2500", "retry-after": "9"})
    assert retry_after == 2.5
    error = RateLimitedError("slow down", retry_after_s=retry_after)
    delay = next_retry_delay(error, 1, base_s=BASE, cap_s=CAP, rng=random.Random(3))
    assert 2.5 <= delay <= 2.75


def test_retry_after_http_date_becomes_the_floor() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 120, usegmt=True)
    retry_after = parse_retry_after({"Retry-After": header}, now=now)
    assert retry_after == pytest.approx(120.0)
    error = RateLimitedError("slow down", retry_after_s=retry_after)
    delay = next_retry_delay(error, 1, base_s=BASE, cap_s=CAP, rng=random.Random(3))
    assert 120.0 <= delay <= 121.0


TRANSIENT = [
    RateLimitedError("x", status_code=429),
    ProviderTimeoutError("x"),
    ProviderConnectionError("x"),
    ProviderStreamError("x"),
    ProviderServerError("x", status_code=503),
]
PERMANENT = [
    InvalidRequestError("x", status_code=400),
    ContextLengthError("x", status_code=400),
    ContentPolicyError("x", status_code=400),
    AuthError("x", status_code=401),
    ModelNotFoundError("x", status_code=404),
    QuotaExceededError("x", status_code=429),
    ProviderError("x"),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_errors_are_retried_until_the_last_attempt(error: ProviderError) -> None:
    assert should_retry(error, 1, 5)
    assert should_retry(error, 4, 5)
    assert not should_retry(error, 5, 5)
    assert not should_retry(error, 6, 5)


@pytest.mark.parametrize("error", PERMANENT, ids=lambda e: type(e).__name__)
def test_permanent_errors_are_never_retried(error: ProviderError) -> None:
    assert not should_retry(error, 1, 5)


def test_single_attempt_budget_never_retries() -> None:
    assert not should_retry(ProviderServerError("x"), 1, 1)
