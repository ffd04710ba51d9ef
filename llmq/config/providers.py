"""The providers a process can call, from the settings: one :class:`ProviderSpec` per provider.

- ``openai``: ``OPENAI_API_KEY`` (+ ``OPENAI_BASE_URL``), or the simulator at ``{simulator_url}/v1``;
- ``anthropic``: ``ANTHROPIC_API_KEY`` (+ ``ANTHROPIC_BASE_URL``), or the simulator at ``{simulator_url}``;
- one OpenAI-compatible provider per ``LLMQ_PROVIDER_<NAME>_BASE_URL`` (vLLM, Ollama, llama.cpp).

The API checks submitted models against these; the workers build their clients from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmq.config.model_ids import split_model
from llmq.config.settings import Settings

SIMULATOR_API_KEY = "sk-simulator"
# Given explicitly so that the SDKs never fall back to reading OPENAI_BASE_URL/ANTHROPIC_BASE_URL
# from the environment themselves: Settings is the only source of configuration.
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"
BUILTIN_PROVIDERS = ("openai", "anthropic")


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


def provider_specs(settings: Settings) -> dict[str, ProviderSpec]:
    """Every configured provider by name. Raises ``ValueError`` for a bad extra provider name."""
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
    return specs


def is_known_model(specs: dict[str, ProviderSpec], model: str) -> bool:
    """True when ``model`` is ``provider/model`` for one of these providers."""
    try:
        provider, _ = split_model(model)
    except ValueError:
        return False
    return provider in specs
