"""Token estimates without a tokenizer: what a call reserves against a model's TPM
(:func:`estimate_tokens`, used by the gate with :class:`~llmq.workers.ratelimit.RateLimiter`), and
the text of a message's content (:func:`content_text`, also used by routing to size a prompt).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["content_text", "estimate_input_tokens", "estimate_tokens"]

# A prompt's share of tokens per message beyond its text (role, separators), and of the reply's
# priming, as OpenAI documents for its chat format; close enough for Anthropic.
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_REPLY = 3
_BYTES_PER_TOKEN = 4


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or OpenAI-style content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # content parts: [{"type": "text", "text": "..."}, ...]
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                parts.append(str(part.get("text") or ""))
            else:
                parts.append(str(part))
        return "".join(parts)
    return str(content)


def estimate_input_tokens(messages: Iterable[Any]) -> int:
    """Prompt tokens of ``messages`` (mappings or objects with ``role``/``content``), estimated
    without a tokenizer: UTF-8 bytes / 4 per message, plus the chat format's overhead.

    Bytes rather than characters: the same as chars/4 for English text, and less of an
    underestimate for scripts that take more tokens per character (CJK, Cyrillic)."""
    total = _TOKENS_PER_REPLY
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else getattr(message, "content", "")
        size = len(content_text(content).encode("utf-8"))
        total += _TOKENS_PER_MESSAGE + math.ceil(size / _BYTES_PER_TOKEN)
    return total


def estimate_tokens(
    messages: Iterable[Any], max_tokens: int | None, *, default_max_tokens: int = 1024
) -> int:
    """The TPM reservation of a call: estimated prompt tokens plus the most it may generate
    (``max_tokens``, or ``default_max_tokens`` when the job gives none)."""
    output = max_tokens if max_tokens is not None else default_max_tokens
    return estimate_input_tokens(messages) + max(0, output)
