"""Chat Completions client for OpenAI and every OpenAI-compatible server (vLLM, Ollama, llama.cpp).

Built on ``openai.AsyncOpenAI`` with the SDK's retries off (``max_retries=0``): every attempt is
llmq's, counted and recorded. The connection pool is sized to the worker's concurrency. Each
call runs under a total deadline (:func:`~llmq.workers.providers.base.with_deadline`), and every
SDK exception leaves this module as a typed
:class:`~llmq.workers.providers.errors.ProviderError`.

Note that the SDK (3.x) is built on ``httpx2``: an injected ``http_client`` must be an
``httpx2.AsyncClient``.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import httpx2
import openai
from openai import omit

from llmq.workers.providers import openai_surface as surface
from llmq.workers.providers.base import (
    ProgressCallback,
    ProviderRequest,
    ProviderResponse,
    ProviderUsage,
    SdkProvider,
    StreamMeter,
    aiohttp_http_client,
    sse_data,
)
from llmq.workers.providers.errors import (
    InvalidRequestError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderStreamError,
    ProviderTimeoutError,
    describe,
    dropped_connection,
    error_for_status,
    parse_retry_after,
    scrub_message,
)

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

__all__ = ["OpenAIProvider"]

# OpenAI's reasoning models reject ``max_tokens`` and take ``max_completion_tokens`` instead.
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")


class OpenAIProvider(SdkProvider):
    """A :class:`~llmq.workers.providers.base.Provider` speaking the Chat Completions API.

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
    ) -> None:
        self.name = name
        self._api_key = api_key
        timeout = httpx2.Timeout(timeout_s, connect=connect_timeout_s)
        if http_client is None:
            http_client = aiohttp_http_client(openai.DefaultAioHttpClient, timeout, max_connections)
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=0,
            http_client=http_client,
        )

    # --- the call --------------------------------------------------------------------------------

    async def _complete(
        self, request: ProviderRequest, on_progress: ProgressCallback | None, meter: StreamMeter
    ) -> ProviderResponse:
        messages: list[ChatCompletionMessageParam] = []
        for m in request.messages:
            if m.role == "system":
                messages.append({"role": "system", "content": m.content})
            elif m.role == "user":
                messages.append({"role": "user", "content": m.content})
            elif m.role == "assistant":
                if m.tool_calls:
                    messages.append(
                        cast(Any, {"role": "assistant", "content": m.content, "tool_calls": m.tool_calls})
                    )
                else:
                    messages.append({"role": "assistant", "content": m.content})
            elif m.role == "tool" and m.tool_call_id is not None:
                messages.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
            else:
                raise InvalidRequestError(f"{self.name}: unsupported message role {m.role!r}")
        # Only OpenAI itself (or its simulator) hosts these; compatible servers get max_tokens.
        reasoning = self.name == "openai" and bool(_REASONING_MODEL.match(request.model))
        max_tokens = request.max_tokens if request.max_tokens is not None else omit
        common: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "max_tokens": omit if reasoning else max_tokens,
            "max_completion_tokens": max_tokens if reasoning else omit,
            "temperature": request.temperature if request.temperature is not None else omit,
            "user": request.user if request.user is not None else omit,
        }
        if request.options is not None:
            common.update(surface.request_options(request.options))
        if on_progress is None:
            try:
                completion = await self._client.chat.completions.create(**common)
            except openai.OpenAIError as exc:
                raise self._map_error(exc, request) from exc
            if request.options is not None:
                return surface.from_completion(completion, self.name)
            return self._from_completion(completion)

        # The SDK makes the request and raises its typed errors for an error status; the event
        # stream itself is read as plain JSON lines (``_consume``): a model object per token would
        # cost more CPU than the rest of the job. The request goes through the SDK's own
        # low-level ``post`` (the same client, headers, auth, errors as ``create``) with the body
        # as a plain dict: ``create``'s transform of its typed params, which change nothing in a
        # Chat Completions body, costs ~0.3 ms of CPU per call (BENCHMARKS, "Session 7").
        body: dict[str, Any] = {k: v for k, v in common.items() if v is not omit}
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        streaming = False
        try:
            response = cast(
                httpx2.Response,
                await self._client.post("/chat/completions", body=body, cast_to=httpx2.Response, stream=True),
            )
            streaming = True
            try:
                chunks = response.aiter_bytes()
                if request.options is not None:
                    return await surface.consume_stream(
                        chunks, response.request, on_progress, meter, self.name
                    )
                return await self._consume(chunks, response.request, on_progress, meter)
            finally:
                await response.aclose()
        except (openai.OpenAIError, httpx2.HTTPError, ssl.SSLError) as exc:
            raise self._map_error(exc, request, streaming=streaming) from exc

    def _from_completion(self, completion: ChatCompletion) -> ProviderResponse:
        usage = completion.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        details = usage.prompt_tokens_details if usage else None
        cached = (details.cached_tokens or 0) if details else 0
        if not completion.choices:
            error = ProviderServerError(f"{self.name}: the answer had no choices")
            if usage:  # it came back, and was billed
                error.billed = ProviderUsage(prompt_tokens, completion_tokens, cached)
            raise error
        choice = completion.choices[0]
        text = choice.message.content or ""
        finish = choice.finish_reason or "unknown"
        if not text and choice.message.refusal:
            finish = "content_filter"
        return ProviderResponse(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            model=completion.model or None,
            cached_tokens=cached,
        )

    async def _consume(
        self,
        chunks: AsyncIterator[bytes],
        http_request: httpx2.Request,
        on_progress: ProgressCallback,
        meter: StreamMeter,
    ) -> ProviderResponse:
        text = ""
        pieces = 0
        finish: str | None = None
        model: str | None = None
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        async for data in sse_data(chunks):
            if data.startswith(b"[DONE]"):
                continue  # read on to the end of the body, so the connection can be reused
            chunk = json.loads(data)
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):  # an error object inside a 200 stream, as the SDK reads it
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else None
                raise openai.APIError(
                    message if isinstance(message, str) and message else "An error occurred during streaming",
                    request=http_request,
                    body=error,
                )
            model = chunk.get("model") or model
            usage = chunk.get("usage")
            if usage:
                prompt_tokens = meter.prompt_tokens = usage.get("prompt_tokens")
                completion_tokens = meter.completion_tokens = usage.get("completion_tokens")
                meter.cached_tokens = int(
                    (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                )
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue
                content = (choice.get("delta") or {}).get("content")
                if content:
                    # ``+=`` on a str with one reference is resized in place by CPython, so the
                    # running text costs linear time, not quadratic.
                    text += content
                    pieces += 1
                    meter.pieces = pieces
                    on_progress(text, pieces)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        if finish is None:
            raise ProviderStreamError(
                f"{self.name}: the stream ended before a finish_reason ({pieces} pieces received)"
            )
        return ProviderResponse(
            text=text,
            finish_reason=finish,
            # Servers that ignore stream_options send no usage: count one token per piece.
            prompt_tokens=prompt_tokens or 0,
            completion_tokens=completion_tokens if completion_tokens is not None else pieces,
            model=model,
            cached_tokens=meter.cached_tokens,
        )

    # --- errors ----------------------------------------------------------------------------------

    def _map_error(
        self, exc: Exception, request: ProviderRequest, *, streaming: bool = False
    ) -> ProviderError:
        def scrub(text: str) -> str:
            return scrub_message(text, secrets=(self._api_key,), prompts=(m.text for m in request.messages))

        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException) and not dropped_connection(exc):
            where = "while streaming" if streaming else "waiting for the answer"
            return ProviderTimeoutError(f"{self.name}: timed out {where}")
        if isinstance(exc, openai.APIConnectionError | httpx2.HTTPError):
            if streaming:
                return ProviderStreamError(scrub(f"{self.name}: the stream broke: {describe(exc)}"))
            return ProviderConnectionError(scrub(f"{self.name}: connection failed: {describe(exc)}"))
        if isinstance(exc, openai.APIStatusError):
            api_message, code, kind = _error_fields(exc.body, exc.code, exc.type)
            status = exc.status_code
            return error_for_status(
                status,
                scrub(f"{self.name}: HTTP {status}: {api_message or exc.message}"),
                code=code,
                kind=kind,
                retry_after_s=parse_retry_after(exc.response.headers),
            )
        if isinstance(exc, openai.APIError):
            # An error object inside a 200 stream, or a body that failed validation.
            api_message, code, kind = _error_fields(exc.body, exc.code, exc.type)
            return error_for_status(
                None,
                scrub(f"{self.name}: {api_message or exc.message}"),
                code=code,
                kind=kind,
            )
        return ProviderError(scrub(f"{self.name}: {type(exc).__name__}: {exc}"))


def _error_fields(
    body: object, code: str | None, kind: str | None
) -> tuple[str | None, str | None, str | None]:
    """(message, code, type) from an OpenAI-style error body, inner ``error`` object or not."""
    message: str | None = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            raw_message = inner.get("message")
            message = raw_message if isinstance(raw_message, str) else None
            code = code or _str_or_none(inner.get("code"))
            kind = kind or _str_or_none(inner.get("type"))
        elif isinstance(inner, str):
            message = inner
    elif isinstance(body, str):
        message = body
    return message, code, kind


def _str_or_none(value: object) -> str | None:
    return str(value) if value is not None else None
