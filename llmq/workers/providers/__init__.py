"""Provider clients (OpenAI, Anthropic, OpenAI-compatible servers), their errors and routing."""

from llmq.workers.providers.anthropic_provider import AnthropicProvider
from llmq.workers.providers.base import (
    ChatMessage,
    ProgressCallback,
    Provider,
    ProviderRequest,
    ProviderResponse,
)
from llmq.workers.providers.errors import (
    AuthError,
    ContentPolicyError,
    ContextLengthError,
    InvalidRequestError,
    ModelNotFoundError,
    PermanentError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderStreamError,
    ProviderTimeoutError,
    QuotaExceededError,
    RateLimitedError,
    TransientError,
    parse_retry_after,
)
from llmq.workers.providers.openai_provider import OpenAIProvider
from llmq.workers.providers.registry import (
    ProviderRegistry,
    UnknownProviderError,
    split_model,
)

__all__ = [
    "AnthropicProvider",
    "AuthError",
    "ChatMessage",
    "ContentPolicyError",
    "ContextLengthError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "OpenAIProvider",
    "PermanentError",
    "ProgressCallback",
    "Provider",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderRegistry",
    "ProviderRequest",
    "ProviderResponse",
    "ProviderServerError",
    "ProviderStreamError",
    "ProviderTimeoutError",
    "QuotaExceededError",
    "RateLimitedError",
    "TransientError",
    "UnknownProviderError",
    "parse_retry_after",
    "split_model",
]
