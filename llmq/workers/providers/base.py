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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import httpx2

from llmq.workers.providers.errors import ProviderError, ProviderTimeoutError
from llmq.workers.providers.json_output import check_json_output, wants_json
from llmq.workers.providers.usage import ProviderUsage, StreamMeter
from llmq.workers.tokens import content_text

__all__ = [
    "ChatMessage",
    "ProgressCallback",
    "Provider",
    "ProviderRequest",
    "ProviderResponse",
    "ProviderUsage",
    "StreamMeter",
    "sse_data",
    "with_deadline",
]

T = TypeVar("T")


@dataclass(frozen=True)
class ChatMessage:
    """One message in OpenAI's shape. ``content`` is a string, or a list of content parts
    (``{"type": "text", ...}``, ``{"type": "image_url", ...}``), or None for an assistant turn
    that only called tools."""

    role: str  # system | user | assistant | tool
    content: Any
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's calls (OpenAI's shape)
    tool_call_id: str | None = None  # a tool message: the call it answers

    @property
    def text(self) -> str:
        """The text of ``content`` (the text parts joined), for scrubbing and estimates."""
        return self.content if isinstance(self.content, str) else content_text(self.content)


@dataclass(frozen=True)
class ProviderRequest:
    model: str  # the model name WITHOUT the provider prefix, e.g. "gpt-4o-mini"
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None
    temperature: float | None
    user: str | None = None
    timeout_s: float = 120.0  # total deadline for the call, stream included
    # tools, tool_choice, response_format, stop, seed, top_p, n as the job gave them (OpenAI's
    # spelling; each provider maps them); None for a plain job, whose call is built as before.
    options: dict[str, Any] | None = None


@dataclass(frozen=True)
class ProviderResponse:
    text: str
    # Normalised: "stop" | "length" | "content_filter" | "tool_calls" | another raw value.
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str | None  # the model the provider says served the call
    status_code: int = 200
    # Of prompt_tokens (which count every input token): read from the provider's prompt cache,
    # and written to it (see ``providers/usage.py``).
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    # The first choice's tool calls, OpenAI's shape: [{"id", "type": "function", "function":
    # {"name", "arguments" (JSON text)}}]; None when the model called none.
    tool_calls: list[dict[str, Any]] | None = None
    # Every choice when the request asked for n > 1: [{"index", "text", "finish_reason",
    # "tool_calls"}]; None otherwise (the first choice is also text/finish_reason/tool_calls).
    choices: list[dict[str, Any]] | None = None


ProgressCallback = Callable[[str, int], None]
"""``(text so far, completion tokens so far)``; called on every streamed piece, so keep it cheap."""


@runtime_checkable
class Provider(Protocol):
    name: str  # "openai", "anthropic", or the configured name of an OpenAI-compatible server

    async def complete(
        self, request: ProviderRequest, on_progress: ProgressCallback | None = None
    ) -> ProviderResponse: ...

    async def aclose(self) -> None: ...


async def sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The ``data`` of each server-sent event in a body read as raw ``chunks`` (multi-line data
    joined by newlines; comments, ``event:`` and ``id:`` fields skipped).

    Lines are split here, on bytes, rather than through the HTTP client's text and line decoders:
    a stream of a few hundred events per call made those layers of async generators a visible
    share of a worker's CPU. Lines end in LF, CRLF or CR, as the SSE format allows.
    """
    data: list[bytes] = []

    def feed(line: bytes) -> bytes | None:
        if not line:  # a blank line ends the event
            event = b"\n".join(data) if data else None
            data.clear()
            return event
        if line.startswith(b"data:"):
            data.append(line[6:] if line.startswith(b"data: ") else line[5:])
        return None

    pending = b""
    async for chunk in chunks:
        pending += chunk
        if pending.endswith(b"\r"):  # may be the first half of a CRLF split across reads
            continue
        *lines, pending = _split_lines(pending)
        for line in lines:
            if (event := feed(line)) is not None:
                yield event
    for line in [*_split_lines(pending), b""]:  # the body may end without a blank line
        if (event := feed(line)) is not None:
            yield event


def _split_lines(buffer: bytes) -> list[bytes]:
    if b"\r" in buffer:
        buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return buffer.split(b"\n")


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


class SdkProvider:
    """What the providers built on an official SDK share: they own the SDK client (and its HTTP
    client), enforce each call's total deadline, and close both in :meth:`aclose`. Subclasses set
    ``name`` and ``_client`` and implement ``_complete``."""

    name: str
    _client: Any

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={str(self._client.base_url)!r})"

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(
        self, request: ProviderRequest, on_progress: ProgressCallback | None = None
    ) -> ProviderResponse:
        """The call under its deadline. A failure after output had streamed says what the
        provider billed (``ProviderError.billed``), from the stream's meter. An answer that
        misses the job's ``response_format`` is a failure too (``json_output.py``)."""
        meter = StreamMeter()
        try:
            response = await with_deadline(
                self._complete(request, on_progress, meter), request.timeout_s, provider=self.name
            )
            if request.options is not None and wants_json(request.options):
                check_json_output(request.options, response, self.name)
            return response
        except ProviderError as exc:
            if exc.billed is None:
                exc.billed = meter.billed(request.messages)
            raise

    async def _complete(
        self, request: ProviderRequest, on_progress: ProgressCallback | None, meter: StreamMeter
    ) -> ProviderResponse:
        raise NotImplementedError


def aiohttp_http_client(
    factory: Callable[..., httpx2.AsyncClient], timeout: httpx2.Timeout, max_connections: int
) -> httpx2.AsyncClient:
    """The SDK's own aiohttp transport (``factory`` is ``openai.DefaultAioHttpClient`` or
    ``anthropic.DefaultAioHttpClient``), its pool sized to the calls in flight and redirects off:
    with hundreds of calls in flight it costs a fraction of the CPU of the default httpx2 pool."""
    return factory(
        timeout=timeout,
        limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        follow_redirects=False,
    )
