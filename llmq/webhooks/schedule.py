"""When to try again: the webhook retry schedule and the ``Retry-After`` header.

:func:`next_delivery_delay` spaces the attempts of one webhook event along the configured schedule,
with ±10 % jitter, and never sooner than a receiver's ``Retry-After``. :func:`parse_retry_after`
reads that header (``retry-after-ms`` or ``retry-after``); the provider clients read a provider's
429/503 with it too (``workers/providers/errors.py`` re-exports it), which is why it lives here,
below the workers, and depends on nothing in llmq.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Mapping, Sequence

__all__ = ["next_delivery_delay", "parse_retry_after"]


def next_delivery_delay(
    schedule: Sequence[float],
    attempt: int,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Delay before attempt ``attempt + 1`` (``schedule[0]`` is the first, immediate attempt), with
    ±10 % jitter; ``None`` when the schedule is used up."""
    if attempt >= len(schedule):
        return None
    base = schedule[attempt]
    jittered = base * (0.9 + 0.2 * (rng or random).random()) if base > 0 else 0.0
    if retry_after_s is not None:
        jittered = max(jittered, retry_after_s)
    return jittered


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # Plain dicts are case-sensitive; httpx Headers are not.
    for key, val in headers.items():
        if key.lower() == name:
            return val
    return None


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` (float milliseconds, preferred when present and
    valid) or ``retry-after`` (float seconds, or an HTTP date: seconds from ``now``, never
    negative). ``None`` when neither header is present or parseable."""
    if not headers:
        return None
    raw_ms = _header(headers, "retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms.strip())
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
