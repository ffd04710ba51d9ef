"""Messages API client for Anthropic, on ``anthropic.AsyncAnthropic`` with the SDK's retries off.

Differences from Chat Completions handled here:

- system messages go in the top-level ``system`` parameter, joined by a blank line; the
  ``messages`` list holds only user/assistant turns;
- ``max_tokens`` is required: the request's, else ``default_max_tokens``;
- ``stop_reason`` is normalised (end_turn/stop_sequence → "stop", max_tokens → "length",
  refusal → "content_filter", tool_use → "tool_calls");
- errors can arrive as an ``error`` event inside a 200 stream (``overloaded_error``), and are
  classified by their ``error.type``.

The SDK (2.x) sends no ``temperature`` parameter of its own; the request's is passed through
``extra_body``. It is built on ``httpx2`` and refuses ``httpx`` objects: an injected
``http_client`` must be an ``httpx2.AsyncClient``.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2
from anthropic import omit

from llmq.workers.providers import anthropic_surface as surface
from llmq.workers.providers.base import (
    ProgressCallback,
    ProviderRequest,
    ProviderResponse,
    SdkProvider,
    StreamMeter,
    aiohttp_http_client,
    sse_data,
)
from llmq.workers.providers.errors import (
    InvalidRequestError,
    ProviderConnectionError,
    ProviderError,
    ProviderStreamError,
    ProviderTimeoutError,
    describe,
    dropped_connection,
    error_for_status,
    parse_retry_after,
    scrub_message,
)

if TYPE_CHECKING:
    from anthropic.types import Message, MessageParam

__all__ = ["AnthropicProvider", "from_message", "normalise_stop_reason"]

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
    "tool_use": "tool_calls",
}


def normalise_stop_reason(stop_reason: str | None) -> str:
    if stop_reason is None:
        return "unknown"
    return _STOP_REASONS.get(stop_reason, stop_reason)


class AnthropicProvider(SdkProvider):
    """A :class:`~llmq.workers.providers.base.Provider` speaking the Anthropic Messages API.

    The provider owns ``http_client`` (given or built) and closes it in :meth:`aclose`.
    """

    def __init__(
        self,
        name: str,
        *,
        api_key: str,
        base_url: str | None,
        timeout_s: float,
        connect_timeout_s: float,
        max_connections: int,
        http_client: httpx2.AsyncClient | None = None,
        default_max_tokens: int = 1024,
    ) -> None:
        self.name = name
        self._api_key = api_key
        self._default_max_tokens = default_max_tokens
        # Passed on every call too: with the SDK's default timeout, a non-streaming call with a
        # large max_tokens is refused before it is sent ("streaming is required").
        self._timeout = httpx2.Timeout(timeout_s, connect=connect_timeout_s)
        if http_client is None:
            http_client = aiohttp_http_client(anthropic.DefaultAioHttpClient, self._timeout, max_connections)
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            timeout=self._timeout,
            max_retries=0,
            http_client=http_client,
        )

    # --- the call --------------------------------------------------------------------------------

    def _params(self, request: ProviderRequest) -> dict[str, Any]:
        if request.options is not None:
            return self._surface_params(request)
        system = [m.content for m in request.messages if m.role == "system"]
        messages: list[MessageParam] = []
        for m in request.messages:
            if type(m.content) is not str or m.tool_calls is not None or m.role == "tool":
                return self._surface_params(request)  # content parts (images), tool turns
            if m.role == "user":
                messages.append({"role": "user", "content": m.content})
            elif m.role == "assistant":
                messages.append({"role": "assistant", "content": m.content})
            elif m.role != "system":
                raise InvalidRequestError(f"{self.name}: unsupported message role {m.role!r}")
        extra_body: dict[str, Any] = {}
        if request.temperature is not None:
            extra_body["temperature"] = request.temperature
        return {
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_tokens if request.max_tokens is not None else self._default_max_tokens,
            "system": "\n\n".join(system) if system else omit,
            "metadata": {"user_id": request.user} if request.user is not None else omit,
            "extra_body": extra_body or None,
            "timeout": self._timeout,
        }

    def _surface_params(self, request: ProviderRequest) -> dict[str, Any]:
        """A request with options, images or tool turns (``anthropic_surface.py``)."""
        system, messages = surface.conversation(request.messages)
        params, extra_body = surface.request_options(request.options or {})
        if request.temperature is not None:
            extra_body["temperature"] = request.temperature
        return {
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_tokens if request.max_tokens is not None else self._default_max_tokens,
            "system": system if system is not None else omit,
            "metadata": {"user_id": request.user} if request.user is not None else omit,
            "extra_body": extra_body or None,
            "timeout": self._timeout,
            **params,
        }

    async def _complete(
        self, request: ProviderRequest, on_progress: ProgressCallback | None, meter: StreamMeter
    ) -> ProviderResponse:
        params = self._params(request)
        if on_progress is None:
            try:
                message = await self._client.messages.create(**params)
            except anthropic.AnthropicError as exc:
                raise self._map_error(exc, request) from exc
            response = from_message(message)
            if request.options is not None and message.stop_reason == "tool_use":
                response = replace(response, tool_calls=surface.tool_calls_of(message))
            return response

        # The SDK makes the request and raises its typed errors for an error status; the event
        # stream is read as plain JSON lines (``_consume``), without a model object per event.
        streaming = False
        try:
            async with self._client.messages.with_streaming_response.create(
                **params, stream=True
            ) as response:
                streaming = True
                body = response.http_response.aiter_bytes()
                if request.options is not None:
                    return await surface.consume_stream(
                        body,
                        on_progress,
                        meter,
                        self.name,
                        normalise_stop_reason,
                        lambda event: self._stream_error(event, request),
                        _prompt_tokens,
                    )
                return await self._consume(body, on_progress, request, meter)
        except (anthropic.AnthropicError, httpx2.HTTPError, ssl.SSLError) as exc:
            raise self._map_error(exc, request, streaming=streaming) from exc

    async def _consume(
        self,
        chunks: AsyncIterator[bytes],
        on_progress: ProgressCallback,
        request: ProviderRequest,
        meter: StreamMeter,
    ) -> ProviderResponse:
        text = ""
        pieces = 0
        model: str | None = None
        prompt_tokens = 0
        completion_tokens: int | None = None
        stop_reason: str | None = None
        stopped = False
        async for data in sse_data(chunks):
            event = json.loads(data)
            if not isinstance(event, dict):
                continue
            kind = event.get("type")
            if kind == "content_block_delta":
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    text += delta["text"]  # resized in place by CPython: linear overall
                    pieces += 1
                    meter.pieces = pieces
                    on_progress(text, pieces)
            elif kind == "message_start":
                message = event.get("message") or {}
                model = message.get("model") or None
                usage = message.get("usage") or {}
                prompt_tokens = meter.prompt_tokens = _prompt_tokens(usage)
                _meter_cache(meter, usage)
                completion_tokens = usage.get("output_tokens")
            elif kind == "message_delta":
                stop_reason = (event.get("delta") or {}).get("stop_reason") or stop_reason
                usage = event.get("usage") or {}
                if usage.get("output_tokens") is not None:
                    completion_tokens = meter.completion_tokens = usage["output_tokens"]
                if usage.get("input_tokens") is not None and _prompt_tokens(usage) > prompt_tokens:
                    # The final counts (cumulative), when the delta carries them.
                    prompt_tokens = meter.prompt_tokens = _prompt_tokens(usage)
                    _meter_cache(meter, usage)
            elif kind == "message_stop":
                stopped = True
            elif kind == "error":  # an error event inside a 200 stream (overloaded_error, ...)
                raise self._stream_error(event, request)
        if not stopped:
            raise ProviderStreamError(
                f"{self.name}: the stream ended before message_stop ({pieces} pieces received)"
            )
        return ProviderResponse(
            text=text,
            finish_reason=normalise_stop_reason(stop_reason),
            prompt_tokens=prompt_tokens,
            completion_tokens=max(completion_tokens or 0, 0) or pieces,
            model=model,
            cached_tokens=meter.cached_tokens,
            cache_write_tokens=meter.cache_write_tokens,
        )

    def _stream_error(self, event: dict[str, Any], request: ProviderRequest) -> ProviderError:
        message = _body_message(event) or "an error event in the stream"
        text = scrub_message(
            f"{self.name}: stream error: {message}",
            secrets=(self._api_key,),
            prompts=(m.text for m in request.messages),
        )
        details = _body_error(event).get("details")
        code = details.get("error_code") if isinstance(details, dict) else None
        return error_for_status(
            None, text, code=code if isinstance(code, str) else None, kind=_body_type(event)
        )

    # --- errors ----------------------------------------------------------------------------------

    def _map_error(
        self, exc: Exception, request: ProviderRequest, *, streaming: bool = False
    ) -> ProviderError:
        def scrub(text: str) -> str:
            return scrub_message(text, secrets=(self._api_key,), prompts=(m.text for m in request.messages))

        if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException) and not dropped_connection(
            exc
        ):
            where = "while streaming" if streaming else "waiting for the answer"
            return ProviderTimeoutError(f"{self.name}: timed out {where}")
        if isinstance(exc, anthropic.APIConnectionError | httpx2.HTTPError):
            if streaming:
                return ProviderStreamError(scrub(f"{self.name}: the stream broke: {describe(exc)}"))
            return ProviderConnectionError(scrub(f"{self.name}: connection failed: {describe(exc)}"))
        if isinstance(exc, anthropic.APIStatusError):
            # An error event inside a 200 stream arrives here too, with status 200.
            status = exc.status_code if exc.status_code >= 400 else None
            api_message = exc.api_message or _body_message(exc.body) or exc.message
            prefix = f"{self.name}: HTTP {status}" if status else f"{self.name}: stream error"
            return error_for_status(
                status,
                scrub(f"{prefix}: {api_message}"),
                code=exc.error_code,
                kind=exc.type or _body_type(exc.body),
                retry_after_s=parse_retry_after(exc.response.headers),
            )
        return ProviderError(scrub(f"{self.name}: {type(exc).__name__}: {exc}"))


def from_message(message: Message) -> ProviderResponse:
    """A Messages answer's text, stop reason and usage (its tool calls: ``anthropic_surface``)."""
    text = "".join(block.text for block in message.content if block.type == "text")
    usage = message.usage
    return ProviderResponse(
        text=text,
        finish_reason=normalise_stop_reason(message.stop_reason),
        prompt_tokens=_prompt_tokens(usage),
        completion_tokens=usage.output_tokens,
        model=message.model or None,
        cached_tokens=usage.cache_read_input_tokens or 0,
        cache_write_tokens=usage.cache_creation_input_tokens or 0,
    )


def _meter_cache(meter: StreamMeter, usage: dict[str, Any]) -> None:
    meter.cached_tokens = int(usage.get("cache_read_input_tokens") or 0)
    meter.cache_write_tokens = int(usage.get("cache_creation_input_tokens") or 0)


def _prompt_tokens(usage: Any) -> int:
    """All input tokens: uncached, written to the cache and read from it (``usage`` is the SDK's
    object or the JSON of a streamed event)."""

    def tokens(name: str) -> int:
        value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
        return int(value or 0)

    return tokens("input_tokens") + tokens("cache_creation_input_tokens") + tokens("cache_read_input_tokens")


def _body_error(body: object) -> dict[str, Any]:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner
    return {}


def _body_message(body: object) -> str | None:
    message = _body_error(body).get("message")
    return message if isinstance(message, str) else None


def _body_type(body: object) -> str | None:
    kind = _body_error(body).get("type")
    return kind if isinstance(kind, str) else None
