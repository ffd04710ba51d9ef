"""What a provider call used, as the provider reported it, and what a failed call was billed.

:class:`ProviderUsage` is the usage of one call in llmq's terms: ``prompt_tokens`` counts every
input token, the ones read from the provider's prompt cache (``cached_tokens``) and written to
it (``cache_write_tokens``) included. That is OpenAI's own meaning of ``prompt_tokens``; for
Anthropic, whose ``input_tokens`` leaves the cache out, the clients add the three up, so the two
providers' figures compare.

A call can fail after the provider has done (and billed) the work: a stream that broke after
output had come, a response that came back but was refused. :class:`StreamMeter` follows a
stream as it arrives so that such a failure can say what was used: the prompt as the provider
reported it (Anthropic's ``message_start``), else as estimated, and one output token per piece
received. A failure before any output is taken as not billed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from llmq.workers.tokens import estimate_input_tokens

__all__ = ["ProviderUsage", "StreamMeter"]


@dataclass(frozen=True)
class ProviderUsage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it


class StreamMeter:
    """The usage of a stream so far; the clients update it as events arrive (cheap attributes)."""

    __slots__ = ("cache_write_tokens", "cached_tokens", "completion_tokens", "pieces", "prompt_tokens")

    def __init__(self) -> None:
        self.prompt_tokens: int | None = None  # None: not reported (yet)
        self.completion_tokens: int | None = None
        self.cached_tokens = 0
        self.cache_write_tokens = 0
        self.pieces = 0

    def billed(self, messages: Iterable[Any]) -> ProviderUsage | None:
        """What the provider billed a call that failed at this point: ``None`` before any output."""
        if self.pieces == 0 and not self.completion_tokens:
            return None
        prompt = self.prompt_tokens
        if prompt is None:
            prompt = estimate_input_tokens(messages)
        return ProviderUsage(
            prompt_tokens=prompt,
            completion_tokens=max(self.completion_tokens or 0, self.pieces),
            cached_tokens=self.cached_tokens,
            cache_write_tokens=self.cache_write_tokens,
        )
