"""One POST of one webhook event: sign, send, classify the answer.

Redirects are never followed (a 3xx is a failure); ``410 Gone`` stops the retries of that event;
``Retry-After`` on 429/503 is honoured as the floor of the next delay.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import httpx

from llmq.models.webhook_events import EventToSend
from llmq.webhooks import sign
from llmq.workers.providers.errors import parse_retry_after
from llmq.workers.ssrf import BlockedDestination, pin


@dataclass(frozen=True)
class DeliveryOutcome:
    success: bool
    status_code: int | None
    latency_ms: int
    error: str | None
    stop: bool = False
    retry_after_s: float | None = None


def post_event(
    client: httpx.Client, event: EventToSend, *, timeout_s: float, allow_private: bool = False
) -> DeliveryOutcome:
    headers = {
        "content-type": "application/json",
        "user-agent": "llmq-webhooks/1",
        **sign(event.secret, event.event_id, int(time.time()), event.payload),
    }
    started = time.monotonic()
    url = event.url
    extensions: dict[str, str] = {}
    if not allow_private:
        try:
            pinned = pin(event.url)
        except (BlockedDestination, OSError) as exc:
            return DeliveryOutcome(False, None, _ms(started), f"refused: {exc}"[:500])
        url = pinned.url
        headers["host"] = pinned.host_header
        if pinned.sni_hostname:
            extensions["sni_hostname"] = pinned.sni_hostname
    try:
        response = client.post(
            url, content=event.payload.encode(), headers=headers, timeout=timeout_s, extensions=extensions
        )
    except httpx.TimeoutException:
        return DeliveryOutcome(False, None, _ms(started), "timeout")
    except httpx.HTTPError as exc:
        return DeliveryOutcome(False, None, _ms(started), f"{type(exc).__name__}: {exc}"[:500])
    status = response.status_code
    if 200 <= status < 300:
        return DeliveryOutcome(True, status, _ms(started), None)
    retry_after = parse_retry_after(response.headers) if status in (429, 503) else None
    return DeliveryOutcome(
        False,
        status,
        _ms(started),
        f"HTTP {status}",
        stop=status == 410,
        retry_after_s=retry_after,
    )


def next_delivery_delay(
    schedule: list[float], attempt: int, retry_after_s: float | None = None, rng: random.Random | None = None
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


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
