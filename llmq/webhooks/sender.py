"""One POST of one webhook event: sign, send, classify the answer.

Sends run on the worker process's event loop (aiohttp), so a slow receiver holds a coroutine, not
a thread; the first attempt of an event goes out from the LLM worker that ended the job, the
retries from the webhooks queue.

Redirects are never followed (a 3xx is a failure); ``410 Gone`` stops the retries of that event;
``Retry-After`` on 429/503 is honoured as the floor of the next delay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from llmq.models.outbox import EventToSend
from llmq.webhooks.schedule import parse_retry_after
from llmq.webhooks.signing import sign
from llmq.webhooks.ssrf import BlockedDestination, pin


@dataclass(frozen=True)
class DeliveryOutcome:
    success: bool
    status_code: int | None
    latency_ms: int
    error: str | None
    stop: bool = False
    retry_after_s: float | None = None


def webhook_session(max_connections: int) -> aiohttp.ClientSession:
    """The HTTP client of a process's webhook sends; create it on the event loop that uses it."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=60),
        auto_decompress=False,
        trust_env=False,
    )


def prepare(
    event: EventToSend, *, allow_private: bool
) -> tuple[str, dict[str, str], str | None] | DeliveryOutcome:
    """The URL to connect to, the headers and the TLS server name of one attempt — or the
    refusal, when the URL now resolves to a forbidden address. Resolves DNS: call it off the loop."""
    headers = {
        "content-type": "application/json",
        "user-agent": "llmq-webhooks/1",
        **sign(event.secret, event.event_id, int(time.time()), event.payload),
    }
    if allow_private:
        return event.url, headers, None
    try:
        pinned = pin(event.url)
    except (BlockedDestination, OSError) as exc:
        return DeliveryOutcome(False, None, 0, f"refused: {exc}"[:500])
    headers["host"] = pinned.host_header
    return pinned.url, headers, pinned.sni_hostname


async def post_event(
    session: aiohttp.ClientSession,
    event: EventToSend,
    url: str,
    headers: dict[str, str],
    server_hostname: str | None,
    *,
    timeout_s: float,
) -> DeliveryOutcome:
    """POST one attempt, never following a redirect, within ``timeout_s`` in total."""
    started = time.monotonic()
    extra: dict[str, Any] = {"server_hostname": server_hostname} if server_hostname else {}
    try:
        async with session.post(
            url,
            data=event.payload.encode(),
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            **extra,
        ) as response:
            await response.read()  # a small body, read so the connection can be reused
            status = response.status
            response_headers = response.headers
    except TimeoutError:
        return DeliveryOutcome(False, None, _ms(started), "timeout")
    except aiohttp.ClientError as exc:
        return DeliveryOutcome(False, None, _ms(started), f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= status < 300:
        return DeliveryOutcome(True, status, _ms(started), None)
    retry_after = parse_retry_after(response_headers) if status in (429, 503) else None
    return DeliveryOutcome(
        False,
        status,
        _ms(started),
        f"HTTP {status}",
        stop=status == 410,
        retry_after_s=retry_after,
    )


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
