"""Settings from the environment: names, parsing, and named OpenAI-compatible providers."""

from __future__ import annotations

import pytest

from llmq.config.settings import Settings


def test_defaults_are_the_embedded_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url == "sqlite:///var/llmq.db"
    assert settings.redis_url is None
    assert settings.uses_simulator
    assert settings.api_port == 8000 and settings.flower_port == 5555
    assert settings.max_attempts == 5


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db:5432/llmq")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    monkeypatch.setenv("FLOWER_PORT", "5600")
    monkeypatch.setenv("LLMQ_WEBHOOK_RETRY_SCHEDULE", "0, 1,2.5")
    monkeypatch.setenv("LLMQ_PROVIDER_LOCAL_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("LLMQ_PROVIDER_LOCAL_API_KEY", "ollama")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/llmq"
    assert settings.broker_url == "redis://cache:6379/1"
    assert not settings.uses_simulator
    assert settings.flower_port == 5600
    assert settings.webhook_retry_schedule == [0.0, 1.0, 2.5]
    assert settings.extra_providers["local"].base_url == "http://127.0.0.1:11434/v1"
    assert settings.extra_providers["local"].api_key == "ollama"


def test_bad_schedule_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_WEBHOOK_RETRY_SCHEDULE", "0,-5")
    with pytest.raises(ValueError):
        Settings()
