"""The price table built from the providers file: the cost in USD of a call, from its usage.

Every token kind is billed at its own price. The prompt's tokens include the ones read from and
written to the provider's prompt cache (llmq counts Anthropic's ``input_tokens`` +
``cache_read_input_tokens`` + ``cache_creation_input_tokens`` as the prompt, like OpenAI's
``prompt_tokens``, which include ``cached_tokens``), so::

    cost = ((prompt - cached - cache_write) * input
            + cached * cached_input + cache_write * cache_write
            + completion * output) / 1,000,000

to 8 decimals (a missing cache price is the input price: see ``config/prices.py``). A call through
the provider's batch API is priced the same way at the model's batch price (:meth:`PriceTable.
batch_cost`: half the standard price unless the file gives one).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal

from llmq.config.providers_file import ModelPrice, ProvidersConfig

_PER_TOKENS = Decimal(1_000_000)
_COST_QUANTUM = Decimal("0.00000001")  # 8 decimals


class PriceTable:
    """Model → price, and the cost of a call."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = dict(prices)

    @classmethod
    def from_config(cls, config: ProvidersConfig) -> PriceTable:
        return cls(config.model_prices())

    def __contains__(self, model: object) -> bool:
        return model in self._prices

    def __len__(self) -> int:
        return len(self._prices)

    def models(self) -> list[str]:
        return sorted(self._prices)

    def price(self, model: str) -> ModelPrice | None:
        return self._prices.get(model)

    def cost(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Decimal | None:
        """US dollars for a call to ``model`` ("provider/model"), to 8 decimals; ``None`` when the
        model has no price (the job still runs, its cost is unknown). ``cached_tokens`` and
        ``cache_write_tokens`` are part of ``prompt_tokens``; a provider that reports more of them
        than prompt tokens is believed on the cache counts (the uncached part is then 0)."""
        return _cost(
            self._prices.get(model), prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens
        )

    def batch_cost(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Decimal | None:
        """:meth:`cost` at the model's batch price (a call through the provider's batch API)."""
        price = self._prices.get(model)
        return _cost(
            None if price is None else price.batch(),
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            cache_write_tokens,
        )

    def cost_usd(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float | None:
        """:meth:`cost` as a float."""
        cost = self.cost(model, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens)
        return None if cost is None else float(cost)

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models)"


def _cost(
    price: ModelPrice | None,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int,
    cache_write_tokens: int,
) -> Decimal | None:
    if price is None:
        return None
    if min(prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens) < 0:
        raise ValueError("token counts must be non-negative")
    uncached = max(0, prompt_tokens - cached_tokens - cache_write_tokens)
    cost = (
        Decimal(uncached) * price.input_usd_per_mtok
        + Decimal(cached_tokens) * price.cached_input
        + Decimal(cache_write_tokens) * price.cache_write
        + Decimal(completion_tokens) * price.output_usd_per_mtok
    ) / _PER_TOKENS
    return cost.quantize(_COST_QUANTUM, rounding=ROUND_HALF_EVEN)
