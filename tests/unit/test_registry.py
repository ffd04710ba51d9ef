"""Model routing: splitting model names, and which client (and URL) serves which provider."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import pytest

from llmq.config.settings import OpenAICompatibleEndpoint, Settings
from llmq.workers.providers import (
    AnthropicProvider,
    ChatMessage,
    OpenAIProvider,
    Provider,
    ProviderRegistry,
    ProviderRequest,
    UnknownProviderError,
    split_model,
)


def make_settings(**overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "openai_api_key": None,
        "openai_base_url": None,
        "anthropic_api_key": None,
        "anthropic_base_url": None,
        "extra_providers": {},
        "simulator_url": "http://sim.test:8100",
    }
    fields.update(overrides)
    return Settings(**fields)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("openai/gpt-4o-mini", ("openai", "gpt-4o-mini")),
        ("anthropic/claude-3-5-haiku-latest", ("anthropic", "claude-3-5-haiku-latest")),
        ("local/meta/llama3", ("local", "meta/llama3")),
        ("ollama/llama3.1:8b", ("ollama", "llama3.1:8b")),
    ],
)
def test_split_model(model: str, expected: tuple[str, str]) -> None:
    assert split_model(model) == expected


@pytest.mark.parametrize("model", ["gpt-4o-mini", "/gpt-4o", "openai/", "", "/", " /x"])
def test_split_model_rejects_missing_parts(model: str) -> None:
    with pytest.raises(ValueError):
        split_model(model)


def test_without_keys_both_builtins_use_the_simulator() -> None:
    registry = ProviderRegistry.from_settings(make_settings())
    assert registry.known_providers() == {"openai", "anthropic"}
    assert registry.spec("openai").simulator and registry.spec("anthropic").simulator
    assert registry.spec("openai").base_url == "http://sim.test:8100/v1"
    assert registry.spec("anthropic").base_url == "http://sim.test:8100"
    assert registry.spec("openai").api_key == "sk-simulator"


def test_with_keys_builtins_use_the_real_providers() -> None:
    registry = ProviderRegistry.from_settings(
        make_settings(
            openai_api_key="sk-real",
            anthropic_api_key="sk-ant-real",
            anthropic_base_url="https://proxy.example/anthropic",
        )
    )
    assert not registry.spec("openai").simulator and not registry.spec("anthropic").simulator
    assert registry.spec("openai").base_url == "https://api.openai.com/v1"
    assert registry.spec("anthropic").base_url == "https://proxy.example/anthropic"
    assert "sk-real" not in repr(registry.spec("openai"))


def test_one_key_only_sends_the_other_provider_to_the_simulator() -> None:
    registry = ProviderRegistry.from_settings(make_settings(openai_api_key="sk-real"))
    assert not registry.spec("openai").simulator
    assert registry.spec("anthropic").simulator


def test_extra_providers_are_openai_compatible_clients_with_their_name() -> None:
    registry = ProviderRegistry.from_settings(
        make_settings(
            extra_providers={
                "local": OpenAICompatibleEndpoint(base_url="http://localhost:8000/v1"),
                "ollama": OpenAICompatibleEndpoint(base_url="http://localhost:11434/v1", api_key="k"),
            }
        )
    )
    assert registry.known_providers() == {"openai", "anthropic", "local", "ollama"}
    assert registry.is_known("local/meta/llama3")
    assert not registry.spec("local").simulator
    client, bare = registry.resolve("local/meta/llama3")
    assert isinstance(client, OpenAIProvider)
    assert client.name == "local"
    assert bare == "meta/llama3"
    asyncio.run(registry.aclose())


def test_extra_provider_cannot_shadow_a_builtin() -> None:
    with pytest.raises(ValueError, match="shadow"):
        ProviderRegistry.from_settings(
            make_settings(extra_providers={"openai": OpenAICompatibleEndpoint(base_url="http://x/v1")})
        )


def test_resolve_builds_each_client_once_and_lazily() -> None:
    registry = ProviderRegistry.from_settings(make_settings())
    assert registry._clients == {}  # nothing built until asked
    openai_client, bare = registry.resolve("openai/gpt-4o-mini")
    assert bare == "gpt-4o-mini"
    assert isinstance(openai_client, OpenAIProvider) and isinstance(openai_client, Provider)
    assert registry.resolve("openai/gpt-4o")[0] is openai_client
    anthropic_client, _ = registry.resolve("anthropic/claude-3-5-haiku-latest")
    assert isinstance(anthropic_client, AnthropicProvider)
    assert set(registry._clients) == {"openai", "anthropic"}
    asyncio.run(registry.aclose())
    assert registry._clients == {}


@pytest.mark.parametrize("model", ["mistral/mistral-large", "gpt-4o-mini", "openai/", ""])
def test_unknown_or_malformed_models_are_refused(model: str) -> None:
    registry = ProviderRegistry.from_settings(make_settings())
    assert not registry.is_known(model)
    with pytest.raises(UnknownProviderError):
        registry.resolve(model)


def test_unknown_provider_error_lists_the_known_ones() -> None:
    registry = ProviderRegistry.from_settings(make_settings())
    with pytest.raises(UnknownProviderError, match="anthropic, openai"):
        registry.resolve("mistral/large")
    assert issubclass(UnknownProviderError, ValueError)
    assert "mistral" not in registry.known_providers()


def test_simulator_clients_call_the_simulator_urls() -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        seen.append((str(req.url), req.headers.get("authorization", ""), json.loads(req.content)))
        if req.url.path.endswith("/chat/completions"):
            return httpx2.Response(
                200,
                json={
                    "id": "c",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "gpt-4o-mini",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "ok"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                },
            )
        return httpx2.Response(
            200,
            json={
                "id": "m",
                "type": "message",
                "role": "assistant",
                "model": "claude-3-5-haiku-latest",
                "content": [{"type": "text", "text": "ok"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": 1},
            },
        )

    registry = ProviderRegistry.from_settings(make_settings(), transport=httpx2.MockTransport(handler))

    async def go() -> None:
        try:
            for model in ("openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"):
                client, bare = registry.resolve(model)
                req = ProviderRequest(bare, (ChatMessage("user", "hi"),), None, None, timeout_s=5)
                assert (await client.complete(req)).text == "ok"
        finally:
            await registry.aclose()

    asyncio.run(go())
    (openai_url, openai_auth, openai_body), (anthropic_url, _, anthropic_body) = seen
    assert openai_url == "http://sim.test:8100/v1/chat/completions"
    assert openai_auth == "Bearer sk-simulator"
    assert openai_body["model"] == "gpt-4o-mini"
    assert anthropic_url == "http://sim.test:8100/v1/messages"
    assert anthropic_body["model"] == "claude-3-5-haiku-latest"
    assert anthropic_body["max_tokens"] == 1024  # settings.default_max_tokens
