"""Providers file loading and cost arithmetic."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from llmq.config.providers_file import ModelPrice, ProvidersFileError, load_providers_file
from llmq.config.settings import DEFAULT_PROVIDERS_FILE
from llmq.workers.pricing import PriceTable

PUBLISHED = {
    "openai/gpt-4o-mini": ("0.15", "0.60"),
    "openai/gpt-4o": ("2.50", "10.00"),
    "openai/gpt-4.1": ("2.00", "8.00"),
    "openai/gpt-4.1-mini": ("0.40", "1.60"),
    "openai/gpt-4.1-nano": ("0.10", "0.40"),
    "openai/o3-mini": ("1.10", "4.40"),
    "openai/o4-mini": ("1.10", "4.40"),
    "openai/gpt-3.5-turbo": ("0.50", "1.50"),
    "anthropic/claude-3-5-haiku-latest": ("0.80", "4.00"),
    "anthropic/claude-3-5-sonnet-latest": ("3.00", "15.00"),
    "anthropic/claude-3-7-sonnet-latest": ("3.00", "15.00"),
    "anthropic/claude-sonnet-4-0": ("3.00", "15.00"),
    "anthropic/claude-opus-4-0": ("15.00", "75.00"),
    "anthropic/claude-3-haiku-20240307": ("0.25", "1.25"),
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.from_config(load_providers_file(DEFAULT_PROVIDERS_FILE))


def test_default_file_lists_the_published_prices(table: PriceTable) -> None:
    assert set(table.models()) == set(PUBLISHED)
    for model, (inp, out) in PUBLISHED.items():
        assert table.price(model) == ModelPrice(
            input_usd_per_mtok=Decimal(inp), output_usd_per_mtok=Decimal(out)
        )


def test_cost_is_tokens_times_price_per_million(table: PriceTable) -> None:
    # 1000 * 0.15 / 1e6 + 500 * 0.60 / 1e6
    assert table.cost_usd("openai/gpt-4o-mini", 1000, 500) == 0.00045
    assert table.cost_usd("anthropic/claude-opus-4-0", 1_000_000, 1_000_000) == 90.0
    assert table.cost_usd("openai/gpt-4o", 0, 0) == 0.0


def test_cost_has_no_float_drift(table: PriceTable) -> None:
    # In floats 3 * 0.1 / 1e6 + 7 * 0.4 / 1e6 is 3.0999999999999997e-06.
    assert table.cost_usd("openai/gpt-4.1-nano", 3, 7) == 0.0000031
    total = sum(table.cost_usd("openai/gpt-4o-mini", 1, 1) or 0.0 for _ in range(1))
    assert total == 0.00000075


def test_cost_is_rounded_to_eight_decimals() -> None:
    table = PriceTable(
        {"x/tiny": ModelPrice(input_usd_per_mtok=Decimal("0.001"), output_usd_per_mtok=Decimal("0"))}
    )
    assert table.cost_usd("x/tiny", 1, 0) == 0.0  # 1e-9 rounds away
    assert table.cost_usd("x/tiny", 15, 0) == 0.00000002  # 1.5e-8, half to even
    assert table.cost_usd("x/tiny", 26, 0) == 0.00000003  # 2.6e-8


def test_unknown_model_has_no_cost(table: PriceTable) -> None:
    assert table.cost_usd("openai/gpt-unknown", 100, 100) is None
    assert table.cost_usd("gpt-4o-mini", 100, 100) is None  # prefix required
    assert "openai/gpt-4o-mini" in table


def test_negative_token_counts_are_refused(table: PriceTable) -> None:
    with pytest.raises(ValueError):
        table.cost_usd("openai/gpt-4o-mini", -1, 0)


def test_integer_prices_and_models_without_prices_are_accepted(tmp_path: Path) -> None:
    config = load_providers_file(
        write(
            tmp_path,
            '[models."local/llama3"]\ninput_usd_per_mtok = 0\noutput_usd_per_mtok = 0\n'
            '[models."vllm/meta/llama-3-8b"]\n',
        )
    )
    table = PriceTable.from_config(config)
    assert table.cost_usd("local/llama3", 10, 10) == 0.0
    assert table.cost_usd("vllm/meta/llama-3-8b", 10, 10) is None
    assert set(config.models) == {"local/llama3", "vllm/meta/llama-3-8b"}


def test_empty_file_is_an_empty_table(tmp_path: Path) -> None:
    assert len(PriceTable.from_config(load_providers_file(write(tmp_path, "# nothing yet\n")))) == 0


def test_malformed_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '# prices\n[models."openai/gpt-4o"]\ninput_usd_per_mtok = 2.50\noutput_usd_per_mtok = = 10\n',
    )
    with pytest.raises(ProvidersFileError) as info:
        load_providers_file(path)
    err = info.value
    assert err.line == 4
    assert err.key == "output_usd_per_mtok"
    assert str(path) in str(err)
    assert "line 4" in str(err)
    assert "output_usd_per_mtok" in str(err)
    assert "Traceback" not in str(err)


def test_duplicate_table_is_a_malformed_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[models."a/b"]\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\n\n'
        '[models."a/b"]\ninput_usd_per_mtok = 2\n',
    )
    with pytest.raises(ProvidersFileError) as info:
        load_providers_file(path)
    assert info.value.line == 5


def test_unknown_model_key_names_line_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# header\n\n"
        '[models."openai/gpt-4o-mini"]\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = 0.6\n\n'
        '[models."openai/gpt-4o"]\ninput_usd_per_mtok = 2.5\n'
        "output_usd_per_mtk = 10\n",
    )
    with pytest.raises(ProvidersFileError) as info:
        load_providers_file(path)
    err = info.value
    assert err.line == 9
    assert err.key == 'models."openai/gpt-4o".output_usd_per_mtk'
    message = str(err)
    assert str(path) in message and "line 9" in message
    assert "output_usd_per_mtk" in message
    assert "unknown key" in message and "output_usd_per_mtok" in message  # lists known keys


def test_unknown_top_level_table_names_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[models."a/b"]\n\n[modles."openai/gpt-4o"]\ninput_usd_per_mtok = 1\n')
    with pytest.raises(ProvidersFileError) as info:
        load_providers_file(path)
    assert info.value.line == 3
    assert info.value.key == "modles"


def test_only_one_price_is_an_error_on_the_model_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'x = 1\n[models."openai/gpt-4o"]\ninput_usd_per_mtok = 2.5\n')
    with pytest.raises(ProvidersFileError) as info:
        load_providers_file(path)
    # The first problem reported is the unknown top-level key on line 1.
    assert info.value.line == 1 and info.value.key == "x"
    path = write(tmp_path, '\n[models."openai/gpt-4o"]\ninput_usd_per_mtok = 2.5\n')
    with pytest.raises(ProvidersFileError) as info:
        load_providers_file(path)
    assert info.value.line == 2
    assert "both" in info.value.reason


def test_model_name_without_provider_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[models."gpt-4o-mini"]\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\n')
    with pytest.raises(ProvidersFileError) as info:
        load_providers_file(path)
    assert info.value.line == 1
    assert "provider" in info.value.reason


def test_negative_and_non_numeric_prices_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path, '[models."a/b"]\ninput_usd_per_mtok = -1\noutput_usd_per_mtok = 1\n')
    with pytest.raises(ProvidersFileError) as info:
        load_providers_file(path)
    assert info.value.line == 2 and info.value.key == 'models."a/b".input_usd_per_mtok'
    path = write(tmp_path, '[models."a/b"]\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = "lots"\n')
    with pytest.raises(ProvidersFileError) as info:
        load_providers_file(path)
    assert info.value.line == 3


def test_inline_tables_are_located_too(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[models]\n"a/b" = { input_usd_per_mtok = 1, output_usd_per_mtok = 1 }\n'
        '"c/d" = { input_usd_per_mtok = 1, ouput = 1 }\n',
    )
    with pytest.raises(ProvidersFileError) as info:
        load_providers_file(path)
    assert info.value.line == 3


def test_missing_file_is_a_providers_file_error(tmp_path: Path) -> None:
    with pytest.raises(ProvidersFileError) as info:
        load_providers_file(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)
