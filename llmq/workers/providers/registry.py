"""Model routing: ``"<provider>/<model>"`` → the provider client that serves it.

Which providers exist comes from :class:`~llmq.settings.Settings`:

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import httpx2
import structlog

from llmq.workers.providers.anthropic_provider import AnthropicProvider
from llmq.workers.providers.base import Provider
from llmq.workers.providers.openai_provider import OpenAIProvider

if TYPE_CHECKING:
    from llmq.settings import Settings

__all__ = ["ProviderRegistry", "ProviderSpec", "UnknownProviderError", "split_model"]

logger = structlog.get_logger(__name__)

SIMULATOR_API_KEY = "sk-simulator"
# Given explicitly so that the SDKs never fall back to reading OPENAI_BASE_URL/ANTHROPIC_BASE_URL
# from the environment themselves: Settings is the only source of configuration.
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"
BUILTIN_PROVIDERS = ("openai", "anthropic")


class UnknownProviderError(ValueError):
    """The model names no configured provider (or is not ``provider/model`` at all)."""


def split_model(model: str) -> tuple[str, str]:
    """``"openai/gpt-4o-mini"`` → ``("openai", "gpt-4o-mini")``.

    Only the first ``/`` separates: ``"local/meta/llama3"`` → ``("local", "meta/llama3")``.
    Raises ``ValueError`` when either part is missing or empty.
    """
    provider, sep, name = model.partition("/")
    if not sep or not provider.strip() or not name.strip():
        raise ValueError(f"model must look like 'provider/model', got {model!r}")
    return provider, name


@dataclass(frozen=True)
class ProviderSpec:
    """How to build one provider's client. ``api_key`` is kept out of ``repr``."""

    name: str
    kind: Literal["openai", "anthropic"]
    base_url: str | None
    api_key: str
    simulator: bool = False

    def __repr__(self) -> str:
        return (
            f"ProviderSpec(name={self.name!r}, kind={self.kind!r}, base_url={self.base_url!r}, "
            f"simulator={self.simulator!r})"
        )


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
        specs: dict[str, ProviderSpec] = {}
        if settings.openai_api_key:
            specs["openai"] = ProviderSpec(
                "openai",
                "openai",
                settings.openai_base_url or OPENAI_DEFAULT_BASE_URL,
                settings.openai_api_key,
            )
        else:
            specs["openai"] = ProviderSpec(
                "openai",
                "openai",
                f"{settings.simulator_url.rstrip('/')}/v1",
                SIMULATOR_API_KEY,
                simulator=True,
            )
        if settings.anthropic_api_key:
            specs["anthropic"] = ProviderSpec(
                "anthropic",
                "anthropic",
                settings.anthropic_base_url or ANTHROPIC_DEFAULT_BASE_URL,
                settings.anthropic_api_key,
            )
        else:
            specs["anthropic"] = ProviderSpec(
                "anthropic",
                "anthropic",
                settings.simulator_url.rstrip("/"),
                SIMULATOR_API_KEY,
                simulator=True,
            )
        for name, endpoint in settings.extra_providers.items():
            if name in BUILTIN_PROVIDERS:
                raise ValueError(
                    f"extra provider {name!r} would shadow the built-in provider of that name; "
                    "use OPENAI_BASE_URL / ANTHROPIC_BASE_URL to point those elsewhere"
                )
            if not name or "/" in name:
                raise ValueError(f"extra provider name {name!r} must be non-empty without '/'")
            specs[name] = ProviderSpec(name, "openai", endpoint.base_url, endpoint.api_key)
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
        try:
            provider, _ = split_model(model)
        except ValueError:
            return False
        return provider in self._specs

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

    def uses_simulator(self, provider_name: str) -> bool:
        spec = self._specs.get(provider_name)
        return spec is not None and spec.simulator

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
