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
    simulator = settings.simulator_url.rstrip("/")
    builtin: dict[str, tuple[Literal["openai", "anthropic"], str | None, str | None, str]] = {
        # name: (SDK, key, base URL when a key is set, the simulator's URL for that SDK)
        "openai": ("openai", settings.openai_api_key, settings.openai_base_url or OPENAI_DEFAULT_BASE_URL,
                   f"{simulator}/v1"),
        "anthropic": ("anthropic", settings.anthropic_api_key,
                      settings.anthropic_base_url or ANTHROPIC_DEFAULT_BASE_URL, simulator),
    }  # fmt: skip
    specs: dict[str, ProviderSpec] = {}
    for name, (kind, api_key, base_url, simulator_url) in builtin.items():
        if api_key:
            specs[name] = ProviderSpec(name, kind, base_url, api_key)
        else:
            specs[name] = ProviderSpec(name, kind, simulator_url, SIMULATOR_API_KEY, simulator=True)
    for name, endpoint in settings.extra_providers.items():
        if name in builtin:
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
