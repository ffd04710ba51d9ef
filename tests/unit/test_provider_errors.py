"""Provider clients against canned HTTP answers: error mapping, request shape, streaming, deadline.

The SDK clients get an ``httpx2.AsyncClient`` over an ``httpx2.MockTransport`` (both SDKs are
built on httpx2, and Anthropic's refuses plain httpx objects); everything above the transport is
the real SDK code path.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import httpx2
import pytest

from llmq.workers.providers import (
    AnthropicProvider,
    AuthError,
    ChatMessage,
    ContentPolicyError,
    ContextLengthError,
    InvalidRequestError,
    ModelNotFoundError,
    OpenAIProvider,
    PermanentError,
    ProviderConnectionError,
    ProviderError,
    ProviderRequest,
    ProviderResponse,
    ProviderServerError,
    ProviderStreamError,
    ProviderTimeoutError,
    QuotaExceededError,
    RateLimitedError,
    TransientError,
    parse_retry_after,
)
from llmq.workers.providers.errors import scrub_message

API_KEY = "sk-test-SECRETSECRETSECRET"
PROMPT = "Summarise the quarterly report of ACME Corp in three bullet points."

Handler = (
    Callable[[httpx2.Request], httpx2.Response]
    | Callable[[httpx2.Request], Coroutine[Any, Any, httpx2.Response]]
)


def request(**overrides: Any) -> ProviderRequest:
    fields: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": (ChatMessage("user", PROMPT),),
        "max_tokens": None,
        "temperature": None,
        "timeout_s": 5.0,
    }
    fields.update(overrides)
    return ProviderRequest(**fields)


def openai_provider(handler: Handler) -> OpenAIProvider:
    return OpenAIProvider(
        "openai",
        api_key=API_KEY,
        base_url="http://provider.test/v1",
        timeout_s=5.0,
        connect_timeout_s=1.0,
        max_connections=4,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )


def anthropic_provider(handler: Handler, **kwargs: Any) -> AnthropicProvider:
    return AnthropicProvider(
        "anthropic",
        api_key=API_KEY,
        base_url="http://provider.test",
        timeout_s=5.0,
        connect_timeout_s=1.0,
        max_connections=4,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
        **kwargs,
    )


def complete(
    provider: OpenAIProvider | AnthropicProvider,
    req: ProviderRequest,
    on_progress: Callable[[str, int], None] | None = None,
) -> ProviderResponse:
    async def go() -> ProviderResponse:
        try:
            return await provider.complete(req, on_progress)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Handler:
    def handler(req: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, json=body, headers=headers or {})

    return handler


def openai_error(
    message: str, *, type_: str = "invalid_request_error", code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def anthropic_error(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}


OPENAI_COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
}

ANTHROPIC_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-20241022",
    "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo!"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 21, "output_tokens": 4},
}


def sse(events: Sequence[tuple[str | None, Any]]) -> bytes:
    out = []
    for event, data in events:
        payload = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {event}\n" if event else "") + f"data: {payload}\n\n")
    return "".join(out).encode()


class ChunkedStream(httpx2.AsyncByteStream):
    """A response body sent in pieces, optionally dying midway like a dropped connection."""

    def __init__(self, chunks: list[bytes], *, then: BaseException | None = None, pause_s: float = 0) -> None:
        self.chunks = chunks
        self.then = then
        self.pause_s = pause_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
            if self.pause_s:
                await asyncio.sleep(self.pause_s)
        if self.then is not None:
            raise self.then


def streaming(chunks: list[bytes], **kwargs: Any) -> Callable[[httpx2.Request], httpx2.Response]:
    def handler(req: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, stream=ChunkedStream(chunks, **kwargs)
        )

    return handler


# --- the tree -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "error_type", "retryable"),
    [
        (RateLimitedError, "rate_limit", True),
        (ProviderTimeoutError, "timeout", True),
        (ProviderConnectionError, "connection_error", True),
        (ProviderStreamError, "stream_error", True),
        (ProviderServerError, "provider_error", True),
        (InvalidRequestError, "invalid_request", False),
        (ContextLengthError, "context_length", False),
        (ContentPolicyError, "content_policy", False),
        (AuthError, "auth", False),
        (ModelNotFoundError, "not_found", False),
        (QuotaExceededError, "quota_exceeded", False),
    ],
)
def test_error_tree_types_and_retryability(
    cls: type[ProviderError], error_type: str, retryable: bool
) -> None:
    error = cls("msg", status_code=400)
    assert error.error_type == error_type
    assert error.retryable is retryable
    assert isinstance(error, TransientError if retryable else PermanentError)
    assert error.as_dict() == {"type": error_type, "message": "msg"}


def test_context_length_is_an_invalid_request() -> None:
    assert issubclass(ContextLengthError, InvalidRequestError)


def test_only_transient_errors_carry_retry_after() -> None:
    assert ProviderServerError("x", retry_after_s=3).retry_after_s == 3
    assert InvalidRequestError("x", retry_after_s=3).retry_after_s is None


def test_errors_survive_pickling_with_their_fields() -> None:
    error = RateLimitedError("slow", status_code=429, retry_after_s=2.5)
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is RateLimitedError
    assert (clone.message, clone.status_code, clone.retry_after_s) == ("slow", 429, 2.5)


# --- Retry-After parsing -------------------------------------------------------------------------


def test_parse_retry_after_variants() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "12"}) == 12.0
    assert parse_retry_after({"Retry-After": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "bogus", "retry-after": "4"}) == 4.0
    assert parse_retry_after({"retry-after": "-3"}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after(httpx2.Headers({"Retry-After-Ms": "1000"})) == 1.0


def test_parse_retry_after_http_date_is_never_negative() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "Tue, 14 Nov 2023 22:12:20 GMT"}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "Tue, 14 Nov 2023 22:13:30 GMT"}, now=now) == pytest.approx(10.0)


def test_scrub_message_removes_key_and_prompt() -> None:
    text = f"bad key {API_KEY} for prompt '{PROMPT}'\n\nmore"
    scrubbed = scrub_message(text, secrets=[API_KEY], prompts=[PROMPT])
    assert API_KEY not in scrubbed and PROMPT not in scrubbed
    assert "[redacted]" in scrubbed and "[prompt]" in scrubbed
    assert "\n" not in scrubbed
    assert len(scrub_message("x" * 5000)) == 500


# --- OpenAI: error mapping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (
            429,
            openai_error("Rate limit reached", type_="requests", code="rate_limit_exceeded"),
            {"retry-after": "7"},
            RateLimitedError,
        ),
        (
            429,
            openai_error(
                "You exceeded your current quota", type_="insufficient_quota", code="insufficient_quota"
            ),
            {},
            QuotaExceededError,
        ),
        (500, openai_error("The server had an error", type_="server_error"), {}, ProviderServerError),
        (502, {"error": "bad gateway"}, {}, ProviderServerError),
        (
            503,
            openai_error("overloaded", type_="server_error"),
            {"retry-after-ms": "1500"},
            ProviderServerError,
        ),
        (408, openai_error("timeout"), {}, ProviderServerError),
        (409, openai_error("engine overloaded"), {}, ProviderServerError),
        (400, openai_error("Invalid 'messages'"), {}, InvalidRequestError),
        (
            400,
            openai_error(
                "This model's maximum context length is 128000 tokens.", code="context_length_exceeded"
            ),
            {},
            ContextLengthError,
        ),
        (
            400,
            openai_error("This model's maximum context length is 8192 tokens"),
            {},
            ContextLengthError,
        ),  # vLLM
        (
            400,
            openai_error("Your request was rejected", code="content_policy_violation"),
            {},
            ContentPolicyError,
        ),
        (400, openai_error("filtered", code="content_filter"), {}, ContentPolicyError),  # Azure
        (413, openai_error("Request too large"), {}, InvalidRequestError),
        (422, openai_error("Unprocessable"), {}, InvalidRequestError),
        (401, openai_error("Incorrect API key provided", code="invalid_api_key"), {}, AuthError),
        (403, openai_error("Country not supported"), {}, AuthError),
        (
            404,
            openai_error("The model `gpt-9` does not exist", code="model_not_found"),
            {},
            ModelNotFoundError,
        ),
    ],
)
def test_openai_status_errors_map_to_the_tree(
    status: int, body: dict[str, Any], headers: dict[str, str], expected: type[ProviderError]
) -> None:
    with pytest.raises(ProviderError) as info:
        complete(openai_provider(error_response(status, body, headers)), request())
    assert type(info.value) is expected
    assert info.value.status_code == status
    assert f"HTTP {status}" in info.value.message


def test_openai_retry_after_is_read_from_the_error_response() -> None:
    handler = error_response(429, openai_error("slow down", type_="requests"), {"retry-after": "7"})
    with pytest.raises(RateLimitedError) as info:
        complete(openai_provider(handler), request())
    assert info.value.retry_after_s == 7.0

    handler = error_response(503, openai_error("busy", type_="server_error"), {"retry-after-ms": "1500"})
    with pytest.raises(ProviderServerError) as info2:
        complete(openai_provider(handler), request())
    assert info2.value.retry_after_s == 1.5


def test_openai_sdk_retries_are_off() -> None:
    calls = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        calls.append(req)
        return httpx2.Response(500, json=openai_error("boom", type_="server_error"))

    with pytest.raises(ProviderServerError):
        complete(openai_provider(handler), request())
    assert len(calls) == 1


def test_openai_connection_and_timeout_failures() -> None:
    def refuse(req: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("[Errno 111] Connection refused", request=req)

    def slow(req: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out", request=req)

    with pytest.raises(ProviderConnectionError) as info:
        complete(openai_provider(refuse), request())
    assert "ConnectError" in info.value.message
    with pytest.raises(ProviderTimeoutError):
        complete(openai_provider(slow), request())


def test_openai_error_messages_never_hold_the_key_or_the_prompt() -> None:
    body = openai_error(f"Incorrect API key provided: {API_KEY}. Prompt was: {PROMPT}")
    with pytest.raises(AuthError) as info:
        complete(openai_provider(error_response(401, body)), request())
    assert API_KEY not in str(info.value) and PROMPT not in str(info.value)


# --- OpenAI: request and response -----------------------------------------------------------------


def test_openai_sends_optional_parameters_only_when_given() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(req.content))
        assert req.url == "http://provider.test/v1/chat/completions"
        assert req.headers["authorization"] == f"Bearer {API_KEY}"
        return httpx2.Response(200, json=OPENAI_COMPLETION)

    messages = (ChatMessage("system", "Be brief."), ChatMessage("user", PROMPT))
    complete(openai_provider(handler), request(messages=messages))
    complete(
        openai_provider(handler),
        request(messages=messages, max_tokens=50, temperature=0.2, user="end-user-1"),
    )
    bare, full = bodies
    assert bare == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}],
    }
    assert full["max_tokens"] == 50 and full["temperature"] == 0.2 and full["user"] == "end-user-1"


def test_openai_reasoning_models_get_max_completion_tokens() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(req.content))
        return httpx2.Response(200, json=OPENAI_COMPLETION)

    complete(openai_provider(handler), request(model="o4-mini", max_tokens=100))
    assert bodies[0]["max_completion_tokens"] == 100 and "max_tokens" not in bodies[0]


def test_openai_plain_call_returns_text_usage_and_model() -> None:
    response = complete(openai_provider(error_response(200, OPENAI_COMPLETION)), request())
    assert response == ProviderResponse(
        text="Hello!",
        finish_reason="stop",
        prompt_tokens=11,
        completion_tokens=3,
        model="gpt-4o-mini-2024-07-18",
    )


def _chunk(
    content: str | None = None, finish: str | None = None, usage: dict[str, int] | None = None
) -> dict[str, Any]:
    choices = (
        []
        if usage
        else [
            {
                "index": 0,
                "delta": {"content": content} if content is not None else {},
                "finish_reason": finish,
            }
        ]
    )
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": choices,
        "usage": usage,
    }


OPENAI_STREAM: list[tuple[str | None, Any]] = [
    (None, _chunk("Hel")),
    (None, _chunk("lo, ")),
    (None, _chunk("world")),
    (None, _chunk(finish="length")),
    (None, _chunk(usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12})),
    (None, "[DONE]"),
]


def test_openai_stream_is_assembled_and_reports_progress() -> None:
    seen: list[tuple[str, int]] = []
    bodies: list[dict[str, Any]] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(req.content))
        return streaming([sse(OPENAI_STREAM)])(req)

    response = complete(openai_provider(handler), request(), lambda t, n: seen.append((t, n)))
    assert bodies[0]["stream"] is True and bodies[0]["stream_options"] == {"include_usage": True}
    assert seen == [("Hel", 1), ("Hello, ", 2), ("Hello, world", 3)]
    assert response == ProviderResponse(
        text="Hello, world",
        finish_reason="length",
        prompt_tokens=9,
        completion_tokens=3,
        model="gpt-4o-mini-2024-07-18",
    )


def test_openai_stream_without_usage_counts_pieces() -> None:
    events = [e for e in OPENAI_STREAM if "usage" not in e[1] or e[1]["usage"] is None]
    response = complete(openai_provider(streaming([sse(events)])), request(), lambda t, n: None)
    assert response.completion_tokens == 3 and response.prompt_tokens == 0


def test_openai_stream_dropped_midway_is_a_stream_error() -> None:
    dropped = httpx2.RemoteProtocolError("peer closed connection without sending complete message body")
    handler = streaming([sse(OPENAI_STREAM[:2])], then=dropped)
    seen: list[str] = []
    with pytest.raises(ProviderStreamError) as info:
        complete(openai_provider(handler), request(), lambda t, n: seen.append(t))
    assert seen == ["Hel", "Hello, "]
    assert info.value.retryable


def test_openai_stream_ending_before_finish_is_a_stream_error() -> None:
    handler = streaming([sse(OPENAI_STREAM[:2])])  # closed cleanly, but no finish_reason / [DONE]
    with pytest.raises(ProviderStreamError):
        complete(openai_provider(handler), request(), lambda t, n: None)


def test_openai_error_object_inside_a_stream_is_mapped() -> None:
    events = [(None, _chunk("Hel")), (None, {"error": {"message": "server hiccup", "type": "server_error"}})]
    with pytest.raises(ProviderServerError):
        complete(openai_provider(streaming([sse(events)])), request(), lambda t, n: None)


# --- Anthropic: error mapping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (529, anthropic_error("overloaded_error", "Overloaded"), ProviderServerError),
        (500, anthropic_error("api_error", "Internal server error"), ProviderServerError),
        (503, anthropic_error("api_error", "unavailable"), ProviderServerError),
        (
            429,
            anthropic_error("rate_limit_error", "Number of request tokens has exceeded your rate limit"),
            RateLimitedError,
        ),
        (
            400,
            anthropic_error("invalid_request_error", "messages: roles must alternate"),
            InvalidRequestError,
        ),
        (
            400,
            anthropic_error("invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"),
            ContextLengthError,
        ),
        (
            413,
            anthropic_error("request_too_large", "Request exceeds the maximum allowed number of bytes"),
            InvalidRequestError,
        ),
        (401, anthropic_error("authentication_error", "invalid x-api-key"), AuthError),
        (403, anthropic_error("permission_error", "not allowed"), AuthError),
        (404, anthropic_error("not_found_error", "model: claude-9"), ModelNotFoundError),
        (402, anthropic_error("billing_error", "credit balance is too low"), QuotaExceededError),
    ],
)
def test_anthropic_status_errors_map_to_the_tree(
    status: int, body: dict[str, Any], expected: type[ProviderError]
) -> None:
    req = request(model="claude-3-5-haiku-latest")
    with pytest.raises(ProviderError) as info:
        complete(anthropic_provider(error_response(status, body)), req)
    assert type(info.value) is expected
    assert info.value.status_code == status


def test_anthropic_overloaded_with_retry_after_carries_it() -> None:
    handler = error_response(529, anthropic_error("overloaded_error", "Overloaded"), {"retry-after": "15"})
    with pytest.raises(ProviderServerError) as info:
        complete(anthropic_provider(handler), request(model="claude-3-5-haiku-latest"))
    assert info.value.retry_after_s == 15.0


def test_anthropic_sdk_retries_are_off() -> None:
    calls = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        calls.append(req)
        return httpx2.Response(529, json=anthropic_error("overloaded_error", "Overloaded"))

    with pytest.raises(ProviderServerError):
        complete(anthropic_provider(handler), request(model="claude-3-5-haiku-latest"))
    assert len(calls) == 1


def test_anthropic_connection_refused_is_a_connection_error() -> None:
    def refuse(req: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=req)

    with pytest.raises(ProviderConnectionError):
        complete(anthropic_provider(refuse), request(model="claude-3-5-haiku-latest"))


# --- Anthropic: request and response ---------------------------------------------------------------


def test_anthropic_system_messages_go_to_the_system_parameter() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(req.content))
        assert req.url == "http://provider.test/v1/messages"
        return httpx2.Response(200, json=ANTHROPIC_MESSAGE)

    messages = (
        ChatMessage("system", "You are terse."),
        ChatMessage("user", PROMPT),
        ChatMessage("assistant", "Sure."),
        ChatMessage("system", "Answer in English."),
        ChatMessage("user", "Go on."),
    )
    complete(
        anthropic_provider(handler),
        request(model="claude-3-5-haiku-latest", messages=messages, temperature=0.3, user="u-1"),
    )
    body = bodies[0]
    assert body["system"] == "You are terse.\n\nAnswer in English."
    assert body["messages"] == [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "Go on."},
    ]
    assert body["max_tokens"] == 1024  # Anthropic requires it: the default applies
    assert body["temperature"] == 0.3
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["model"] == "claude-3-5-haiku-latest"


def test_anthropic_without_system_or_options_sends_neither() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(req.content))
        return httpx2.Response(200, json=ANTHROPIC_MESSAGE)

    complete(anthropic_provider(handler, default_max_tokens=77), request(model="claude-3-5-haiku-latest"))
    complete(anthropic_provider(handler), request(model="claude-3-5-haiku-latest", max_tokens=5))
    assert "system" not in bodies[0] and "temperature" not in bodies[0] and "metadata" not in bodies[0]
    assert bodies[0]["max_tokens"] == 77
    assert bodies[1]["max_tokens"] == 5


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "pause_turn"),
    ],
)
def test_anthropic_stop_reasons_are_normalised(stop_reason: str, finish: str) -> None:
    body = {**ANTHROPIC_MESSAGE, "stop_reason": stop_reason}
    response = complete(
        anthropic_provider(error_response(200, body)), request(model="claude-3-5-haiku-latest")
    )
    assert response.finish_reason == finish


def test_anthropic_plain_call_returns_text_usage_and_model() -> None:
    response = complete(
        anthropic_provider(error_response(200, ANTHROPIC_MESSAGE)), request(model="claude-3-5-haiku-latest")
    )
    assert response == ProviderResponse(
        text="Hello!",
        finish_reason="stop",
        prompt_tokens=21,
        completion_tokens=4,
        model="claude-3-5-haiku-20241022",
    )


ANTHROPIC_STREAM: list[tuple[str | None, Any]] = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                **ANTHROPIC_MESSAGE,
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 21, "output_tokens": 1},
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo!"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {"output_tokens": 2},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def test_anthropic_stream_is_assembled_and_reports_progress() -> None:
    seen: list[tuple[str, int]] = []
    bodies: list[dict[str, Any]] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(req.content))
        return streaming([sse(ANTHROPIC_STREAM)])(req)

    response = complete(
        anthropic_provider(handler),
        request(model="claude-3-5-haiku-latest"),
        lambda t, n: seen.append((t, n)),
    )
    assert bodies[0]["stream"] is True
    assert seen == [("Hel", 1), ("Hello!", 2)]
    assert response == ProviderResponse(
        text="Hello!",
        finish_reason="length",
        prompt_tokens=21,
        completion_tokens=2,
        model="claude-3-5-haiku-20241022",
    )


def test_anthropic_stream_dropped_midway_is_a_stream_error() -> None:
    dropped = httpx2.RemoteProtocolError("peer closed connection without sending complete message body")
    handler = streaming([sse(ANTHROPIC_STREAM[:4])], then=dropped)
    with pytest.raises(ProviderStreamError):
        complete(anthropic_provider(handler), request(model="claude-3-5-haiku-latest"), lambda t, n: None)


def test_anthropic_stream_ending_before_message_stop_is_a_stream_error() -> None:
    handler = streaming([sse(ANTHROPIC_STREAM[:5])])
    with pytest.raises(ProviderStreamError):
        complete(anthropic_provider(handler), request(model="claude-3-5-haiku-latest"), lambda t, n: None)


def test_anthropic_overloaded_event_inside_a_stream_is_a_server_error() -> None:
    events = [*ANTHROPIC_STREAM[:4], ("error", anthropic_error("overloaded_error", "Overloaded"))]
    with pytest.raises(ProviderServerError) as info:
        complete(
            anthropic_provider(streaming([sse(events)])),
            request(model="claude-3-5-haiku-latest"),
            lambda t, n: None,
        )
    assert info.value.status_code is None


# --- the deadline and cancellation ---------------------------------------------------------------


async def _sleepy(req: httpx2.Request) -> httpx2.Response:
    await asyncio.sleep(10)
    return httpx2.Response(200, json=OPENAI_COMPLETION)


@pytest.mark.parametrize("make", [openai_provider, anthropic_provider])
def test_total_deadline_is_enforced(make: Callable[[Handler], OpenAIProvider | AnthropicProvider]) -> None:
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError) as info:
        complete(make(_sleepy), request(timeout_s=0.2))
    assert time.monotonic() - started < 3
    assert "deadline" in info.value.message


def test_deadline_covers_a_stream_that_keeps_trickling() -> None:
    # Each piece arrives well within any read timeout, but the whole takes too long.
    chunks = [sse([e]) for e in OPENAI_STREAM]
    handler = streaming(chunks, pause_s=0.15)
    seen: list[str] = []
    with pytest.raises(ProviderTimeoutError):
        complete(openai_provider(handler), request(timeout_s=0.35), lambda t, n: seen.append(t))
    assert seen  # it was streaming when the deadline hit


@pytest.mark.parametrize("make", [openai_provider, anthropic_provider])
def test_cancellation_propagates_untouched(
    make: Callable[[Handler], OpenAIProvider | AnthropicProvider],
) -> None:
    async def go() -> None:
        provider = make(_sleepy)
        task = asyncio.create_task(provider.complete(request(timeout_s=30)))
        await asyncio.sleep(0.1)
        task.cancel()
        try:
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await provider.aclose()

    asyncio.run(go())


def test_unknown_role_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequestError):
        complete(
            openai_provider(error_response(200, OPENAI_COMPLETION)),
            request(messages=(ChatMessage("tool", "x"),)),
        )
