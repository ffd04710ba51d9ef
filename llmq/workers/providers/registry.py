"""Model routing: ``"<provider>/<model>"`` → the provider client that serves it.

Which providers exist comes from :class:`~llmq.config.settings.Settings`
(:func:`~llmq.config.providers.provider_specs`):

- ``openai``: ``OPENAI_API_KEY`` (+ ``OPENAI_BASE_URL``), or the simulator at
  ``{simulator_url}/v1`` when no key is set;
- ``anthropic``: ``ANTHROPIC_API_KEY`` (+ ``ANTHROPIC_BASE_URL``), or the simulator at
  ``{simulator_url}`` when no key is set;
- one OpenAI-compatible client per entry of ``settings.extra_providers`` (vLLM, Ollama,
  llama.cpp), named by its key: ``LLMQ_PROVIDER_LOCAL_BASE_URL`` serves ``local/<model>``.

Clients are built on the first :meth:`ProviderRegistry.resolve` of their provider and reused:
one client, and so one connection pool, per provider per process.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx2
import structlog

from llmq.config.model_ids import split_model
from llmq.config.providers import ProviderSpec, is_known_model, provider_specs
from llmq.workers.providers.anthropic_provider import AnthropicProvider
from llmq.workers.providers.base import Provider, SdkProvider
from llmq.workers.providers.batch_clients import AnthropicBatchApi, BatchApi, OpenAIBatchApi
from llmq.workers.providers.openai_provider import OpenAIProvider

if TYPE_CHECKING:
    from llmq.config.settings import Settings

__all__ = ["ProviderRegistry", "ProviderSpec", "UnknownProviderError", "split_model"]

logger = structlog.get_logger(__name__)


class UnknownProviderError(ValueError):
    """The model names no configured provider (or is not ``provider/model`` at all)."""


class ProviderRegistry:
    """The providers a process can call, with their clients built lazily and kept."""

    def __init__(
        self,
        specs: Mapping[str, ProviderSpec],
        *,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 100,
        default_max_tokens: int = 1024,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport``, when given, carries every client's requests (a test's
        ``httpx2.MockTransport``); otherwise each client opens its own connection pool."""
        self._specs = dict(specs)
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._default_max_tokens = default_max_tokens
        self._transport = transport
        self._clients: dict[str, Provider] = {}
        self._build_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, transport: httpx2.AsyncBaseTransport | None = None
    ) -> ProviderRegistry:
        specs = provider_specs(settings)
        return cls(
            specs,
            timeout_s=settings.provider_timeout_s,
            connect_timeout_s=settings.provider_connect_timeout_s,
            max_connections=settings.provider_max_connections,
            default_max_tokens=settings.default_max_tokens,
            transport=transport,
        )

    def known_providers(self) -> set[str]:
        return set(self._specs)

    def spec(self, provider_name: str) -> ProviderSpec:
        try:
            return self._specs[provider_name]
        except KeyError:
            raise self._unknown(provider_name) from None

    def is_known(self, model: str) -> bool:
        return is_known_model(self._specs, model)

    def resolve(self, model: str) -> tuple[Provider, str]:
        """``(client, bare model name)`` for ``"provider/model"``; the client is built once."""
        try:
            provider_name, bare = split_model(model)
        except ValueError as exc:
            raise UnknownProviderError(str(exc)) from None
        client = self._clients.get(provider_name)
        if client is None:
            with self._build_lock:  # one client per provider, even when many threads ask at once
                client = self._clients.get(provider_name)
                if client is None:
                    client = self._build(self.spec(provider_name))
                    self._clients[provider_name] = client
        return client, bare

    def batch_api(self, provider_name: str) -> BatchApi | None:
        """The batch API of OpenAI or Anthropic itself (or their simulator), on the provider's own
        SDK client; None for an OpenAI-compatible server (they have none)."""
        if provider_name not in ("openai", "anthropic") or self.spec(provider_name).kind != provider_name:
            return None
        client, _ = self.resolve(f"{provider_name}/batch")
        if not isinstance(client, SdkProvider):
            return None
        if provider_name == "openai":
            return OpenAIBatchApi(client.sdk)
        return AnthropicBatchApi(client.sdk, self._default_max_tokens)

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    # --- internals ---------------------------------------------------------------------------

    def _unknown(self, provider_name: str) -> UnknownProviderError:
        known = ", ".join(sorted(self._specs))
        return UnknownProviderError(f"unknown provider {provider_name!r} (known: {known})")

    def _build(self, spec: ProviderSpec) -> Provider:
        http_client = None
        if self._transport is not None:
            http_client = httpx2.AsyncClient(
                transport=self._transport,
                timeout=httpx2.Timeout(self._timeout_s, connect=self._connect_timeout_s),
            )
        logger.info(
            "provider_client_created",
            provider=spec.name,
            kind=spec.kind,
            base_url=spec.base_url,
            simulator=spec.simulator,
        )
        if spec.kind == "anthropic":
            return AnthropicProvider(
                spec.name,
                api_key=spec.api_key,
                base_url=spec.base_url,
                timeout_s=self._timeout_s,
                connect_timeout_s=self._connect_timeout_s,
                max_connections=self._max_connections,
                http_client=http_client,
                default_max_tokens=self._default_max_tokens,
            )
        return OpenAIProvider(
            spec.name,
            api_key=spec.api_key,
            base_url=spec.base_url,
            timeout_s=self._timeout_s,
            connect_timeout_s=self._connect_timeout_s,
            max_connections=self._max_connections,
            http_client=http_client,
        )
