"""The providers file beyond prices: limits, breakers, fallbacks, cache and routing — and that every
mistake in them is reported with its line and key (prices are in test_pricing.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from llmq.config.provider_batches import ProviderBatchesConfig
from llmq.config.providers_file import (
    BreakerConfig,
    CacheConfig,
    LimitsConfig,
    ModelConfig,
    ProvidersConfig,
    ProvidersFileError,
    RoutingConfig,
    load_providers_file,
)
from llmq.config.settings import DEFAULT_PROVIDERS_FILE
from llmq.workers.pricing import PriceTable


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> ProvidersFileError:
    path = write(tmp_path, text)
    with pytest.raises(ProvidersFileError) as info:
        load_providers_file(path)
    assert str(path) in str(info.value)
    assert "Traceback" not in str(info.value)
    return info.value


FULL = """\
[breaker]
failures = 3
cooldown_s = 12.5
failure_ratio = 0.25
window_s = 30
min_calls = 8
probe_timeout_s = 45

[limits]
window_s = 10
lease_s = 20

[cache]
ttl_s = 600
temperature_zero = true
shared_across_tenants = true
lru_size = 0

[routing]
small_model = "openai/gpt-4o-mini"
large_model = "anthropic/claude-sonnet-4-0"
long_prompt_chars = 5000
complex_words = ["Analyze", "compare"]
complex_min_words = 2
multi_step_cues = ["step by step"]
numbered_steps = 4

[models."openai/gpt-4o"]
input_usd_per_mtok = 2.50
output_usd_per_mtok = 10.00
rpm = 500
tpm = 200000
concurrency = 50
context_window = 128000
fallbacks = [
  "anthropic/claude-3-5-sonnet-latest",
  "openai/gpt-4o-mini",
]
fallback_on_content_policy = true

[models."openai/gpt-4o".breaker]
failures = 2
cooldown_s = 60

[models."local/llama3.1:8b"]
concurrency = 4
"""


def test_every_setting_is_read(tmp_path: Path) -> None:
    config = load_providers_file(write(tmp_path, FULL))
    assert config.breaker == BreakerConfig(
        failures=3, cooldown_s=12.5, failure_ratio=0.25, window_s=30, min_calls=8, probe_timeout_s=45
    )
    assert config.limits == LimitsConfig(window_s=10, lease_s=20)
    assert config.cache == CacheConfig(
        ttl_s=600, temperature_zero=True, shared_across_tenants=True, lru_size=0
    )
    assert config.routing.large_model == "anthropic/claude-sonnet-4-0"
    assert config.routing.complex_words == ["analyze", "compare"]  # matched case-insensitively
    assert (config.routing.complex_min_words, config.routing.numbered_steps) == (2, 4)
    gpt4o = config.models["openai/gpt-4o"]
    assert (gpt4o.rpm, gpt4o.tpm, gpt4o.concurrency, gpt4o.context_window) == (500, 200000, 50, 128000)
    assert gpt4o.fallbacks == ["anthropic/claude-3-5-sonnet-latest", "openai/gpt-4o-mini"]
    assert gpt4o.fallback_on_content_policy is True
    assert config.models["local/llama3.1:8b"].concurrency == 4
    assert PriceTable.from_config(config).cost_usd("openai/gpt-4o", 1000, 0) == 0.0025


def test_model_breaker_overrides_the_defaults_key_by_key(tmp_path: Path) -> None:
    config = load_providers_file(write(tmp_path, FULL))
    assert config.breaker_for("openai/gpt-4o") == BreakerConfig(
        failures=2, cooldown_s=60, failure_ratio=0.25, window_s=30, min_calls=8, probe_timeout_s=45
    )
    assert config.breaker_for("local/llama3.1:8b") == config.breaker
    assert config.breaker_for("vendor/unlisted") == config.breaker


def test_an_empty_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    config = load_providers_file(write(tmp_path, ""))
    assert config.breaker == BreakerConfig(
        failures=5, cooldown_s=30, failure_ratio=0.5, window_s=60, min_calls=20, probe_timeout_s=120
    )
    assert config.limits == LimitsConfig(window_s=60, lease_s=60)
    assert config.cache == CacheConfig(
        ttl_s=3600, temperature_zero=False, shared_across_tenants=False, lru_size=1000
    )
    model = ModelConfig()
    assert (model.rpm, model.tpm, model.concurrency, model.context_window) == (None, None, None, None)
    assert model.fallbacks == [] and model.fallback_on_content_policy is False and model.breaker is None


def test_the_shipped_file_spells_out_the_defaults() -> None:
    shipped = load_providers_file(DEFAULT_PROVIDERS_FILE)
    assert shipped.breaker == BreakerConfig()
    assert shipped.limits == LimitsConfig()
    assert shipped.cache == CacheConfig()
    assert shipped.routing == RoutingConfig()
    assert shipped.models["openai/gpt-4o"].context_window == 128000
    assert all(cfg.context_window for cfg in shipped.models.values())
    # No limits or fallbacks on by default: they depend on the account and change the bill.
    assert not any(cfg.rpm or cfg.tpm or cfg.concurrency or cfg.fallbacks for cfg in shipped.models.values())


def test_the_shipped_file_documents_every_key() -> None:
    text = DEFAULT_PROVIDERS_FILE.read_text(encoding="utf-8")
    for table in (
        BreakerConfig,
        LimitsConfig,
        CacheConfig,
        RoutingConfig,
        ModelConfig,
        ProviderBatchesConfig,
    ):
        for key in table.model_fields:
            assert key in text, f"{table.__name__}.{key} is not documented in the shipped file"


def test_fallbacks_may_name_models_the_file_does_not_list(tmp_path: Path) -> None:
    config = load_providers_file(write(tmp_path, '[models."a/b"]\nfallbacks = ["vendor/elsewhere"]\n'))
    assert config.models["a/b"].fallbacks == ["vendor/elsewhere"]
    assert "vendor/elsewhere" not in config.models


# --- errors name the line and the key ----------------------------------------------------------


@pytest.mark.parametrize("table", ["breaker", "limits", "cache", "routing"])
def test_unknown_key_in_a_top_level_table(tmp_path: Path, table: str) -> None:
    err = error_for(tmp_path, f"# comment\n[{table}]\n\nwindw_s = 5\n")
    assert err.line == 4 and err.key == f"{table}.windw_s"
    assert "unknown key" in err.reason and "known keys" in err.reason


def test_unknown_key_in_a_models_breaker_table(tmp_path: Path) -> None:
    err = error_for(
        tmp_path, '[models."a/b"]\nrpm = 5\n\n[models."a/b".breaker]\nfailures = 2\ncooldown = 9\n'
    )
    assert err.line == 6 and err.key == 'models."a/b".breaker.cooldown'
    assert "cooldown_s" in err.reason  # the known keys are listed


def test_unknown_top_level_table_lists_the_known_ones(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[breakers]\nfailures = 2\n")
    assert err.line == 1 and err.key == "breakers"
    for known in ("models", "breaker", "limits", "cache", "routing"):
        assert known in err.reason


def test_malformed_fallback_names_its_line(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[models."a/b"]\nrpm = 5\nfallbacks = ["c/d", "gpt-4o"]\n')
    assert err.line == 3 and err.key == 'models."a/b".fallbacks'
    assert "'gpt-4o' is not a model id" in err.reason


def test_malformed_fallback_in_a_multi_line_array_names_its_own_line(tmp_path: Path) -> None:
    text = FULL.replace('  "openai/gpt-4o-mini",\n', '  "openai/gpt-4o-mini",\n  "claude",\n')
    err = error_for(tmp_path, text)
    assert err.line is not None and text.splitlines()[err.line - 1].strip() == '"claude",'
    assert err.key == 'models."openai/gpt-4o".fallbacks'


def test_a_model_cannot_be_its_own_fallback(tmp_path: Path) -> None:
    err = error_for(tmp_path, '\n[models."a/b"]\nfallbacks = ["c/d", "a/b"]\n')
    assert err.line == 3 and err.key == 'models."a/b".fallbacks'
    assert "own fallback" in err.reason
    with pytest.raises(ValidationError, match="own fallback"):
        ProvidersConfig(models={"a/b": ModelConfig(fallbacks=["a/b"])})


def test_a_fallback_listed_twice_is_an_error(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[models."a/b"]\nfallbacks = ["c/d", "c/d"]\n')
    assert err.line == 2 and "twice" in err.reason


@pytest.mark.parametrize(
    ("line", "reason_part"),
    [
        ('rpm = "500"', "integer"),
        ("rpm = 0", "greater than or equal to 1"),
        ("tpm = 1.5", "integer"),
        ("concurrency = true", "integer"),
        ("context_window = -1", "greater than or equal to 1"),
        ('fallback_on_content_policy = "yes"', "boolean"),
        ('fallbacks = "c/d"', "list"),
    ],
)
def test_bad_model_values_name_line_and_key(tmp_path: Path, line: str, reason_part: str) -> None:
    err = error_for(tmp_path, f'[models."a/b"]\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\n{line}\n')
    assert err.line == 4
    assert err.key == 'models."a/b".' + line.split(" =")[0]
    assert reason_part in err.reason


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("[breaker]\nfailure_ratio = 1.5\n", 2, "breaker.failure_ratio"),
        ("[breaker]\nfailure_ratio = 0\n", 2, "breaker.failure_ratio"),
        ("[breaker]\ncooldown_s = -1\n", 2, "breaker.cooldown_s"),
        ('[breaker]\ncooldown_s = "30"\n', 2, "breaker.cooldown_s"),
        ("[breaker]\nmin_calls = 0\n", 2, "breaker.min_calls"),
        ("[limits]\nwindow_s = 0\n", 2, "limits.window_s"),
        ("[cache]\nttl_s = 0\n", 2, "cache.ttl_s"),
        ('[cache]\ntemperature_zero = "true"\n', 2, "cache.temperature_zero"),
        ("[cache]\nlru_size = -1\n", 2, "cache.lru_size"),
        ('[routing]\nsmall_model = "gpt-4o-mini"\n', 2, "routing.small_model"),
        ('[routing]\ncomplex_words = ["ok", " "]\n', 2, "routing.complex_words"),
        ('[models."a/b".breaker]\nfailures = 0\n', 2, 'models."a/b".breaker.failures'),
    ],
)
def test_bad_values_in_other_tables_name_line_and_key(tmp_path: Path, text: str, line: int, key: str) -> None:
    err = error_for(tmp_path, "# providers\n" + text)
    assert err.line == line + 1 and err.key == key
