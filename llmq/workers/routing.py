"""Which model a job runs on: ``model: "auto"`` and the fallback chains.

``choose_model(messages, rules)`` — the ``[routing]`` rules of the providers file, in order::

    long prompt      characters of all messages >= long_prompt_chars      → large_model
    multi-step       a multi_step_cues phrase ("step by step", …)         → large_model
    numbered steps   a numbered list of >= numbered_steps items           → large_model
    task words       >= complex_min_words different complex_words         → large_model
                     ("analyze", "compare", "evaluate", …, with -s/-d/-ed/-ing forms)
    otherwise                                                             → small_model

It returns the model and a short reason ("task_words: analyze, compare") for the job to record.

``fallback_chain(model, job_fallbacks, config)`` — the models to try after ``model``: the job's
own list when it gave one, else the model's ``fallbacks`` in the providers file; never ``model``
itself, never a model twice. When to move along the chain (breaker open, retries exhausted,
content policy if ``fallback_on_content_policy``) is the caller's decision.

``larger_window_fallback(chain, config, needed_tokens, failed_model=...)`` — after a
context-length error: the first model of the chain whose ``context_window`` is larger than the
failed model's (and, when given, holds ``needed_tokens``, e.g. the prompt estimate of
:func:`llmq.workers.tokens.estimate_tokens`). Models without a known window are
skipped: a guess would only buy another context-length error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from llmq.config.providers_file import ProvidersConfig, RoutingConfig
from llmq.workers.tokens import content_text

__all__ = ["AUTO_MODEL", "choose_model", "fallback_chain", "larger_window_fallback", "prompt_text"]

AUTO_MODEL = "auto"

_NUMBERED_ITEM = re.compile(r"^\s*\(?(\d{1,3})[.)]\s+\S", re.MULTILINE)


def prompt_text(messages: Iterable[Any]) -> str:
    """The text of all messages, one per paragraph (mappings or objects with ``content``)."""
    texts = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else getattr(message, "content", "")
        texts.append(content_text(content))
    return "\n\n".join(texts)


@lru_cache(maxsize=64)
def _word_pattern(word: str) -> re.Pattern[str]:
    """``analyze`` → analyze, analyzes, analyzed, analyzing (whole words, any case)."""
    stem = word[:-1] if word.endswith("e") else word
    word, stem = re.escape(word), re.escape(stem)
    forms = [word + "(?:s|d)?", stem + "(?:es|ed|ing)", word + "(?:es|ed|ing)"]
    return re.compile(r"(?<![\w-])(?:" + "|".join(forms) + r")(?![\w-])", re.IGNORECASE)


def _numbered_items(text: str) -> int:
    """Items of the longest run 1, 2, 3, … of numbered lines ("1. …", "2) …")."""
    best = run = 0
    for match in _NUMBERED_ITEM.finditer(text):
        number = int(match.group(1))
        run = run + 1 if number == run + 1 else (1 if number == 1 else 0)
        best = max(best, run)
    return best


def choose_model(messages: Iterable[Any], rules: RoutingConfig) -> tuple[str, str]:
    """The model for a ``model: "auto"`` job and why: ``(model, reason)``."""
    text = prompt_text(messages)
    chars = len(text)
    if chars >= rules.long_prompt_chars:
        return rules.large_model, f"long_prompt: {chars} chars >= {rules.long_prompt_chars}"
    lowered = text.lower()
    cues = [cue for cue in rules.multi_step_cues if cue in lowered]
    if cues:
        return rules.large_model, "multi_step: " + ", ".join(cues[:3])
    items = _numbered_items(text)
    if items >= rules.numbered_steps:
        return rules.large_model, f"numbered_steps: {items} items >= {rules.numbered_steps}"
    words = [word for word in rules.complex_words if _word_pattern(word).search(text)]
    if len(words) >= rules.complex_min_words:
        return rules.large_model, "task_words: " + ", ".join(words[:5])
    return rules.small_model, f"simple: {chars} chars, no complexity cues"


def fallback_chain(model: str, job_fallbacks: Sequence[str] | None, config: ProvidersConfig) -> list[str]:
    """The models to try after ``model``, in order (see the module docstring)."""
    if job_fallbacks:
        candidates: Sequence[str] = job_fallbacks
    else:
        cfg = config.model(model)
        candidates = cfg.fallbacks if cfg is not None else []
    chain: list[str] = []
    for name in candidates:
        if name != model and name not in chain:
            chain.append(name)
    return chain


def _window(config: ProvidersConfig, model: str) -> int | None:
    cfg = config.model(model)
    return cfg.context_window if cfg is not None else None


def larger_window_fallback(
    chain: Sequence[str],
    config: ProvidersConfig,
    needed_tokens: int | None = None,
    *,
    failed_model: str | None = None,
) -> str | None:
    """The first model of ``chain`` (the fallbacks left to try) with a known ``context_window``
    larger than ``failed_model``'s, when that is known, and of at least ``needed_tokens``, when
    given; None if there is none. ``failed_model`` itself is never chosen."""
    if failed_model is None and needed_tokens is None:
        raise ValueError("give failed_model, needed_tokens or both")
    floor = _window(config, failed_model) if failed_model is not None else None
    for name in chain:
        if name == failed_model:
            continue
        window = _window(config, name)
        if window is None:
            continue
        if floor is not None and window <= floor:
            continue
        if needed_tokens is not None and window < needed_tokens:
            continue
        return name
    return None
