"""Providers file loading and cost arithmetic."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from llmq.config.providers_file import ModelPrice, ProvidersFileError, load_providers_file
from llmq.config.settings import DEFAULT_PROVIDERS_FILE
from llmq.workers.pricing import PriceTable

# input, output, cached input, cache write (None: not listed, the input price)
PUBLISHED = {
    "openai/gpt-4o-mini": ("0.15", "0.60", "0.075", None),
    "openai/gpt-4o": ("2.50", "10.00", "1.25", None),
    "openai/gpt-4.1": ("2.00", "8.00", "0.50", None),
    "openai/gpt-4.1-mini": ("0.40", "1.60", "0.10", None),
    "openai/gpt-4.1-nano": ("0.10", "0.40", "0.025", None),
    "openai/o3-mini": ("1.10", "4.40", "0.55", None),
    "openai/o4-mini": ("1.10", "4.40", "0.275", None),
    "openai/gpt-3.5-turbo": ("0.50", "1.50", None, None),
    "anthropic/claude-3-5-haiku-latest": ("0.80", "4.00", "0.08", "1.00"),
    "anthropic/claude-3-5-sonnet-latest": ("3.00", "15.00", "0.30", "3.75"),
    "anthropic/claude-3-7-sonnet-latest": ("3.00", "15.00", "0.30", "3.75"),
    "anthropic/claude-sonnet-4-0": ("3.00", "15.00", "0.30", "3.75"),
    "anthropic/claude-opus-4-0": ("15.00", "75.00", "1.50", "18.75"),
    "anthropic/claude-3-haiku-20240307": ("0.25", "1.25", "0.03", "0.30"),
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
    for model, (inp, out, cached, write) in PUBLISHED.items():
        assert table.price(model) == ModelPrice(
            input_usd_per_mtok=Decimal(inp),
            output_usd_per_mtok=Decimal(out),
            cached_input_usd_per_mtok=None if cached is None else Decimal(cached),
            cache_write_usd_per_mtok=None if write is None else Decimal(write),
            taken_on=date(2025, 6, 1),  # [prices] taken_on
        )


def test_cached_input_is_billed_at_the_cached_price(table: PriceTable) -> None:
    # gpt-4o-mini: 976 uncached at 0.15, 1024 cached at 0.075, 100 out at 0.60
    assert table.cost("openai/gpt-4o-mini", 2000, 100, cached_tokens=1024) == Decimal("0.00028320")
    # claude-sonnet-4: 10 uncached at 3, 2000 read at 0.30, 1000 written at 3.75, 5 out at 15
    cost = table.cost("anthropic/claude-sonnet-4-0", 3010, 5, cached_tokens=2000, cache_write_tokens=1000)
    assert cost == Decimal("0.004455")  # (30 + 600 + 3750 + 75) / 1e6


def test_a_missing_cache_price_is_the_input_price(table: PriceTable) -> None:
    # gpt-3.5-turbo lists no cached price: cached tokens cost what input tokens cost
    assert table.cost("openai/gpt-3.5-turbo", 1000, 0, cached_tokens=600) == table.cost(
        "openai/gpt-3.5-turbo", 1000, 0
    )
    # OpenAI models list no cache-write price (OpenAI bills none; a write would cost the input price)
    assert table.cost("openai/gpt-4o", 1000, 0, cache_write_tokens=1000) == Decimal("0.0025")


def test_cache_counts_above_the_prompt_leave_no_negative_uncached_part(table: PriceTable) -> None:
    assert table.cost("openai/gpt-4o-mini", 10, 0, cached_tokens=20) == Decimal("0.0000015")


def test_prices_taken_on_per_model_overrides_the_file_date(tmp_path: Path) -> None:
    config = load_providers_file(
        write(
            tmp_path,
            """
[prices]
taken_on = 2026-01-15

[models."x/a"]
input_usd_per_mtok = 1
output_usd_per_mtok = 2

[models."x/b"]
input_usd_per_mtok = 1
output_usd_per_mtok = 2
cached_input_usd_per_mtok = 0.1
prices_taken_on = 2026-02-01
""",
        )
    )
    table = PriceTable.from_config(config)
    a, b = table.price("x/a"), table.price("x/b")
    assert a is not None and a.taken_on == date(2026, 1, 15) and a.cached_input == Decimal(1)
    assert b is not None and b.taken_on == date(2026, 2, 1) and b.cached_input == Decimal("0.1")
    assert b.public()["cached_input_usd_per_mtok"] == 0.1 and b.public()["taken_on"] == "2026-02-01"


def test_a_cache_price_key_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ProvidersFileError, match="cached_input_usd_per_mtok"):
        load_providers_file(
            write(
                tmp_path,
                """
[models."x/a"]
input_usd_per_mtok = 1
output_usd_per_mtok = 2
cached_input_usd_per_mtok = -1
""",
            )
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
