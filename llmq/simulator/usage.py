"""The ``usage`` the simulator reports, and the provider prompt cache it simulates.

Both real APIs cache the start of a prompt they saw recently and bill those tokens at a lower
price; llmq prices them from the usage the provider reports, so the simulator reports them the
way each API does. Its rule, simple enough for tests to compute:

- the *cacheable prefix* is the prompt's first message for OpenAI (whatever its role), and the
  top-level ``system`` for Anthropic (the real API caches only up to a ``cache_control``
  breakpoint; the simulator behaves as if the system prompt carried one);
- a prefix shorter than ``min_tokens`` (1,024 by default, like both APIs' minimum) is never
  cached; its tokens are counted like any message's (``ceil(len / 4) + 3``);
- the first time a prefix is seen (per API and model) it is written to the cache: Anthropic
  reports its tokens as ``cache_creation_input_tokens``; OpenAI reports nothing (it bills no
  writes);
- seen again within ``ttl_s`` (300 s, the providers' 5 minutes), its tokens are a cache read:
  OpenAI ``usage.prompt_tokens_details.cached_tokens`` (``prompt_tokens`` still counts them),
  Anthropic ``cache_read_input_tokens`` (``input_tokens`` leaves them out). A read refreshes the
  entry's lifetime, as the real caches do;
- a request that fails before an answer (a scripted error) neither reads nor writes the cache;
  one whose stream is dropped mid-way has been processed, and does.

``POST /_sim/reset`` empties the cache.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmq.simulator.text import ParsedRequest

__all__ = ["PromptCache", "anthropic_usage", "openai_usage"]


class PromptCache:
    """Prefixes seen recently, per API and model; bounded (least recently used out first)."""

    def __init__(
        self,
        min_tokens: int = 1024,
        ttl_s: float = 300.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_tokens = min_tokens
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str, bytes], float] = OrderedDict()

    def use(self, api: str, model: str, prefix: str) -> tuple[int, int]:
        """``(cached_tokens, cache_write_tokens)`` of a request whose cacheable prefix is
        ``prefix``, and the cache updated for it."""
        if not prefix:
            return 0, 0
        tokens = math.ceil(len(prefix) / 4) + 3
        if tokens < self.min_tokens:
            return 0, 0
        key = (api, model, hashlib.blake2b(prefix.encode(), digest_size=16).digest())
        now = self._clock()
        seen = self._seen.pop(key, None)
        self._seen[key] = now
        if seen is not None and now - seen <= self.ttl_s:
            return tokens, 0
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return 0, (tokens if api == "anthropic" else 0)

    def clear(self) -> None:
        self._seen.clear()


def openai_usage(parsed: ParsedRequest, n_words: int) -> dict[str, Any]:
    return {
        "prompt_tokens": parsed.prompt_tokens,
        "completion_tokens": n_words,
        "total_tokens": parsed.prompt_tokens + n_words,
        "prompt_tokens_details": {"cached_tokens": parsed.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def anthropic_usage(parsed: ParsedRequest, n_words: int) -> dict[str, Any]:
    return {
        "input_tokens": parsed.prompt_tokens - parsed.cached_tokens - parsed.cache_write_tokens,
        "cache_creation_input_tokens": parsed.cache_write_tokens,
        "cache_read_input_tokens": parsed.cached_tokens,
        "output_tokens": n_words,
        "service_tier": "standard",
    }
