"""``model: "auto"`` and the fallback chains."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llmq.config.providers_file import ModelConfig, ProvidersConfig, RoutingConfig
from llmq.workers.routing import choose_model, fallback_chain, larger_window_fallback

RULES = RoutingConfig(small_model="sim/small", large_model="sim/large", long_prompt_chars=2000)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_short_plain_request_goes_to_the_small_model() -> None:
    model, reason = choose_model(user("Translate 'good morning' into French."), RULES)
    assert model == "sim/small"
    assert reason.startswith("simple")


def test_a_long_prompt_goes_to_the_large_model() -> None:
    messages = [{"role": "system", "content": "x" * 1000}, {"role": "user", "content": "y" * 1000}]
    model, reason = choose_model(messages, RULES)
    assert model == "sim/large"
    assert reason.startswith("long_prompt") and ">= 2000" in reason


@pytest.mark.parametrize(
    "text",
    [
        "Analyze the attached quarterly figures.",
        "Compare these two contracts.",
        "We compared the drafts; which reads better?",
        "Evaluating the plan: is it sound?",
        "Assess the risks of this rollout.",
        "What are the trade-offs of Postgres versus MySQL here?",
    ],
)
def test_task_words_go_to_the_large_model(text: str) -> None:
    model, reason = choose_model(user(text), RULES)
    assert model == "sim/large", reason
    assert reason.startswith("task_words")


@pytest.mark.parametrize(
    "text",
    [
        "Name a planet with rings.",  # "plan" inside a longer word
        "Who is the designer of the Eiffel tower?",
        "Re-evaluated prices are in the table.",  # a hyphenated compound is another word
    ],
)
def test_task_words_match_whole_words_only(text: str) -> None:
    assert choose_model(user(text), RULES)[0] == "sim/small"


def test_multi_step_cues_go_to_the_large_model() -> None:
    model, reason = choose_model(user("Solve x^2 = 9 step by step."), RULES)
    assert model == "sim/large" and reason == "multi_step: step by step"


def test_a_numbered_list_of_steps_goes_to_the_large_model() -> None:
    three = "Do this:\n1. fetch the file\n2. count the words\n3. report the total"
    two = "Do this:\n1. fetch the file\n2) count the words"
    assert choose_model(user(three), RULES) == ("sim/large", "numbered_steps: 3 items >= 3")
    assert choose_model(user(two), RULES)[0] == "sim/small"


def test_rules_come_from_the_file() -> None:
    rules = RoutingConfig(
        small_model="a/s", large_model="a/l", complex_words=["summarise"], complex_min_words=1
    )
    assert choose_model(user("Summarise this memo."), rules) == ("a/l", "task_words: summarise")
    assert choose_model(user("Analyze this memo."), rules)[0] == "a/s"
    strict = RoutingConfig(small_model="a/s", large_model="a/l", complex_min_words=2)
    assert choose_model(user("Analyze this memo."), strict)[0] == "a/s"
    assert choose_model(user("Analyze and compare these memos."), strict)[0] == "a/l"


def test_content_parts_and_message_objects_are_read() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Please evaluate this essay."}]}]
    assert choose_model(parts, RULES)[0] == "sim/large"
    objects = [SimpleNamespace(role="user", content="Please evaluate this essay.")]
    assert choose_model(objects, RULES)[0] == "sim/large"


# --- fallbacks ---------------------------------------------------------------------------------

CONFIG = ProvidersConfig(
    models={
        "openai/gpt-4o": ModelConfig(
            context_window=128000,
            fallbacks=["anthropic/claude-3-5-sonnet-latest", "openai/gpt-4o-mini", "openai/gpt-4.1"],
        ),
        "openai/gpt-4o-mini": ModelConfig(context_window=128000),
        "openai/gpt-4.1": ModelConfig(context_window=1047576),
        "anthropic/claude-3-5-sonnet-latest": ModelConfig(context_window=200000),
        "openai/gpt-3.5-turbo": ModelConfig(context_window=16385),
    }
)


def test_the_configured_chain_is_used_when_the_job_gives_none() -> None:
    assert fallback_chain("openai/gpt-4o", None, CONFIG) == [
        "anthropic/claude-3-5-sonnet-latest",
        "openai/gpt-4o-mini",
        "openai/gpt-4.1",
    ]
    assert fallback_chain("openai/gpt-4o", [], CONFIG) == fallback_chain("openai/gpt-4o", None, CONFIG)
    assert fallback_chain("vendor/unlisted", None, CONFIG) == []


def test_the_jobs_own_list_comes_first_and_no_model_repeats() -> None:
    chain = fallback_chain(
        "openai/gpt-4o", ["openai/gpt-4o", "x/one", "x/two", "x/one", "openai/gpt-4o"], CONFIG
    )
    assert chain == ["x/one", "x/two"]


def test_context_length_error_goes_to_the_first_larger_window() -> None:
    chain = fallback_chain("openai/gpt-4o", None, CONFIG)
    # gpt-4o-mini has the same 128k window: skipped; sonnet's 200k is the first larger one.
    assert larger_window_fallback(chain, CONFIG, failed_model="openai/gpt-4o") == (
        "anthropic/claude-3-5-sonnet-latest"
    )
    assert larger_window_fallback(chain, CONFIG, 300_000, failed_model="openai/gpt-4o") == "openai/gpt-4.1"
    assert larger_window_fallback(chain, CONFIG, 2_000_000, failed_model="openai/gpt-4o") is None


def test_models_with_unknown_windows_are_never_guessed() -> None:
    chain = ["vendor/unknown", "openai/gpt-3.5-turbo", "openai/gpt-4o-mini"]
    assert larger_window_fallback(chain, CONFIG, 20_000) == "openai/gpt-4o-mini"
    assert larger_window_fallback(["vendor/unknown"], CONFIG, failed_model="openai/gpt-4o") is None
    # The failed model's own window unknown: the needed tokens decide.
    assert larger_window_fallback(chain, CONFIG, 10_000, failed_model="vendor/x") == "openai/gpt-3.5-turbo"
    with pytest.raises(ValueError):
        larger_window_fallback(chain, CONFIG)
