"""The one interface every provider client implements, and the values that cross it.

A worker turns a job into a :class:`ProviderRequest`, asks the :class:`Provider` the registry
resolved for the job's model, and gets back a :class:`ProviderResponse` or a typed
:class:`~llmq.workers.providers.errors.ProviderError`. Calls are ``async``: a per-process event
loop runs them, so one worker process can keep many calls in flight.

With ``on_progress`` the call streams and reports the text so far as it arrives; without it the
call is a plain request/response. Both give the same :class:`ProviderResponse`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from llmq.workers.providers.errors import ProviderTimeoutError

__all__ = [
    "ChatMessage",
    "ProgressCallback",
    "Provider",
    "ProviderRequest",
    "ProviderResponse",
    "with_deadline",
]

T = TypeVar("T")

ROLES = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class ProviderRequest:
    model: str  # the model name WITHOUT the provider prefix, e.g. "gpt-4o-mini"
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None
    temperature: float | None
    user: str | None = None
    timeout_s: float = 120.0  # total deadline for the call, stream included


@dataclass(frozen=True)
class ProviderResponse:
    text: str
    # Normalised: "stop" | "length" | "content_filter" | "tool_calls" | another raw value.
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str | None  # the model the provider says served the call
    status_code: int = 200


ProgressCallback = Callable[[str, int], None]
"""``(text so far, completion tokens so far)``; called on every streamed piece, so keep it cheap."""


@runtime_checkable
class Provider(Protocol):
    name: str  # "openai", "anthropic", or the configured name of an OpenAI-compatible server

    async def complete(
        self, request: ProviderRequest, on_progress: ProgressCallback | None = None
    ) -> ProviderResponse: ...

    async def aclose(self) -> None: ...


async def with_deadline(call: Awaitable[T], timeout_s: float, *, provider: str) -> T:
    """Await ``call`` for at most ``timeout_s`` seconds in total, whatever the SDK's own timeouts.

    Past the deadline the call is cancelled and :class:`ProviderTimeoutError` raised. A
    cancellation from outside (the job was cancelled) propagates as ``CancelledError``:
    ``asyncio.timeout`` converts only its own cancellation.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await call
    except TimeoutError as exc:
        raise ProviderTimeoutError(
            f"{provider}: no complete answer within the {timeout_s:g}s deadline"
        ) from exc
