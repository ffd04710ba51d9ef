"""Typed provider errors: what went wrong on a provider call, and whether trying again can help.

Every exception the OpenAI and Anthropic SDKs raise is mapped onto this tree by the provider
clients, so the rest of llmq (retry policy, job state, the API's ``error.type``) never sees an SDK
class. ``error_type`` is the string stored on the job and shown to clients; ``retryable`` is what
the retry policy reads.

Our exception hierarchy::

    ProviderError                      error_type "provider_error"   retryable=False (unclassified)
    ├── TransientError                 retryable=True; may carry retry_after_s (Retry-After)
    │   ├── RateLimitedError           "rate_limit"          429
    │   ├── ProviderTimeoutError       "timeout"             SDK read timeout or our call deadline
    │   ├── ProviderConnectionError    "connection_error"    DNS, refused, reset before an answer
    │   ├── ProviderStreamError        "stream_error"        a stream that broke or ended early
    │   ├── ProviderServerError        "provider_error"      5xx, 529 overloaded, 408, 409
    │   └── InvalidJSONOutputError     "invalid_json_output" an answer that is not JSON, or not
    │                                                        valid against response_format's schema
    └── PermanentError                 retryable=False
        ├── InvalidRequestError        "invalid_request"     400, 413, 422, other 4xx
        │   └── ContextLengthError     "context_length"      the prompt does not fit the window
        ├── ContentPolicyError         "content_policy"      refused by the provider's filter
        ├── AuthError                  "auth"                401, 403
        ├── ModelNotFoundError         "not_found"           404
        └── QuotaExceededError         "quota_exceeded"      402, OpenAI insufficient_quota

``QuotaExceededError`` is an addition to the tree of the design: OpenAI answers an account
without credit with a 429 whose code is ``insufficient_quota``; retrying it only burns attempts.

Messages are built by :func:`scrub_message`, which strips the API key and the prompt text out of
whatever the provider echoed back, and shortens it: an error message is stored and shown.

:func:`parse_retry_after` is defined in ``llmq/webhooks/schedule.py`` (webhook receivers send
``Retry-After`` too, and the webhooks package sits below the workers) and re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from llmq.webhooks.schedule import parse_retry_after
from llmq.workers.providers.usage import ProviderUsage

__all__ = [
    "AuthError",
    "ContentPolicyError",
    "ContextLengthError",
    "InvalidJSONOutputError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "PermanentError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderServerError",
    "ProviderStreamError",
    "ProviderTimeoutError",
    "QuotaExceededError",
    "RateLimitedError",
    "TransientError",
    "describe",
    "error_for_status",
    "parse_retry_after",
    "scrub_message",
]

_MAX_MESSAGE_CHARS = 500


class ProviderError(Exception):
    """Base of every provider failure. Not raised as such except for unclassifiable SDK errors."""

    error_type: ClassVar[str] = "provider_error"
    retryable: ClassVar[bool] = False
    # What the provider billed for the failed call (a stream that broke after output, an answer
    # refused after it came); None: nothing billed, as far as llmq can tell.
    billed: ProviderUsage | None = None

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        # Only transient errors are retried, so only they carry a meaningful Retry-After.
        self.retry_after_s: float | None = retry_after_s if self.retryable else None

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the keyword-only fields when pickled (Celery result backends, multiprocessing).
        return (
            _rebuild,
            (type(self), self.message, self.status_code, self.retry_after_s),
        )

    def as_dict(self) -> dict[str, str]:
        """The job's ``error`` object: ``{"type": ..., "message": ...}``."""
        return {"type": self.error_type, "message": self.message}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_code={self.status_code!r}, "
            f"retry_after_s={self.retry_after_s!r})"
        )


def _rebuild(
    cls: type[ProviderError], message: str, status_code: int | None, retry_after_s: float | None
) -> ProviderError:
    return cls(message, status_code=status_code, retry_after_s=retry_after_s)


class TransientError(ProviderError):
    """Trying again later may succeed."""

    retryable = True


class RateLimitedError(TransientError):
    error_type = "rate_limit"


class ProviderTimeoutError(TransientError):
    error_type = "timeout"


class ProviderConnectionError(TransientError):
    error_type = "connection_error"


class ProviderStreamError(TransientError):
    error_type = "stream_error"


class ProviderServerError(TransientError):
    error_type = "provider_error"


class InvalidJSONOutputError(TransientError):
    """The call succeeded (and was billed) but its answer does not satisfy the job's
    ``response_format``: a sampled answer may well satisfy it the next time, so it is retried."""

    error_type = "invalid_json_output"


class PermanentError(ProviderError):
    """The same request will fail the same way: fail the job at once."""

    retryable = False


class InvalidRequestError(PermanentError):
    error_type = "invalid_request"


class ContextLengthError(InvalidRequestError):
    error_type = "context_length"


class ContentPolicyError(PermanentError):
    error_type = "content_policy"


class AuthError(PermanentError):
    error_type = "auth"


class ModelNotFoundError(PermanentError):
    error_type = "not_found"


class QuotaExceededError(PermanentError):
    error_type = "quota_exceeded"


# --- messages ------------------------------------------------------------------------------------


def scrub_message(
    text: str,
    *,
    secrets: Iterable[str | None] = (),
    prompts: Iterable[str] = (),
    limit: int = _MAX_MESSAGE_CHARS,
) -> str:
    """``text`` without any secret or prompt it might echo, on one line, at most ``limit`` chars."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    # Long prompts first, so a short one inside a long one does not leave fragments behind.
    for prompt in sorted({p for p in prompts if len(p.strip()) >= 8}, key=len, reverse=True):
        text = text.replace(prompt, "[prompt]")
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


# --- classification ------------------------------------------------------------------------------

_CONTEXT_MARKERS = (
    "context length",
    "context_length",
    "context window",
    "context limit",
    "maximum context",
    "prompt is too long",
    "too many tokens",
)
_CONTENT_POLICY_CODES = {"content_policy_violation", "content_filter", "content_policy"}
_QUOTA_CODES = {"insufficient_quota", "billing_error", "billing_hard_limit_reached"}

# Error kinds named in bodies when there is no HTTP status to go by (an error event mid-stream).
_KIND_TO_CLASS: dict[str, type[ProviderError]] = {
    "rate_limit_error": RateLimitedError,
    "rate_limit_exceeded": RateLimitedError,
    "requests": RateLimitedError,
    "tokens": RateLimitedError,
    "overloaded_error": ProviderServerError,
    "api_error": ProviderServerError,
    "server_error": ProviderServerError,
    "internal_error": ProviderServerError,
    "service_unavailable": ProviderServerError,
    "timeout_error": ProviderTimeoutError,
    "invalid_request_error": InvalidRequestError,
    "request_too_large": InvalidRequestError,
    "authentication_error": AuthError,
    "invalid_api_key": AuthError,
    "permission_error": AuthError,
    "not_found_error": ModelNotFoundError,
    "model_not_found": ModelNotFoundError,
}


def error_for_status(
    status: int | None,
    message: str,
    *,
    code: str | None = None,
    kind: str | None = None,
    retry_after_s: float | None = None,
) -> ProviderError:
    """The typed error for a provider's error answer.

    ``status`` is the HTTP status (``None`` or < 400 for an error event inside a 200 stream),
    ``code`` the provider's machine code (OpenAI ``error.code``, Anthropic
    ``error.details.error_code``), ``kind`` its error type (OpenAI ``error.type``, Anthropic
    ``error.type``), ``message`` an already scrubbed message.
    """
    code_l = (code or "").lower()
    kind_l = (kind or "").lower()
    text_l = message.lower()
    cls: type[ProviderError]
    client_side = status is None or status < 500
    if code_l in _CONTENT_POLICY_CODES or kind_l in _CONTENT_POLICY_CODES:
        cls = ContentPolicyError
    elif code_l in _QUOTA_CODES or kind_l in _QUOTA_CODES or status == 402:
        cls = QuotaExceededError
    elif (
        client_side
        and status != 429
        and (code_l == "context_length_exceeded" or any(m in text_l for m in _CONTEXT_MARKERS))
    ):
        cls = ContextLengthError
    elif status is not None and status >= 400:
        cls = _class_for_status(status)
    else:
        cls = _KIND_TO_CLASS.get(kind_l) or _KIND_TO_CLASS.get(code_l) or ProviderServerError
    return cls(message, status_code=status if status and status >= 400 else None, retry_after_s=retry_after_s)


def _class_for_status(status: int) -> type[ProviderError]:
    if status == 429:
        return RateLimitedError
    if status in (401, 403):
        return AuthError
    if status == 404:
        return ModelNotFoundError
    if status in (408, 409) or status >= 500:
        # 408 request timeout and 409 conflict (OpenAI: "the engine is currently overloaded")
        # are worth another try, like 500/502/503/504 and Anthropic's 529 overloaded.
        return ProviderServerError
    return InvalidRequestError


def describe(exc: BaseException) -> str:
    """A short description of a transport failure: the underlying error when the SDK wrapped one
    (``APIConnectionError("Connection error.")`` says less than the ``ConnectError`` under it)."""
    cause = exc.__cause__ or exc.__context__
    inner = cause if cause is not None and type(exc).__name__.endswith("ConnectionError") else exc
    detail = str(inner).strip()
    return f"{type(inner).__name__}: {detail}" if detail else type(inner).__name__


def dropped_connection(exc: BaseException) -> bool:
    """True when the root of ``exc`` is the server closing the connection, not a timeout.

    The SDKs' aiohttp transport reports every ``aiohttp.ClientConnectionError`` as an httpx2
    ``ConnectTimeout``; a dropped connection is a connection error, and is told apart here.
    """
    import aiohttp

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, aiohttp.ServerTimeoutError | TimeoutError):
            return False
        if isinstance(
            current, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | aiohttp.ClientPayloadError
        ):
            return True
        current = current.__cause__ or current.__context__
    return False
