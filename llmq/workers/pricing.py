"""The price table built from the providers file: the cost in USD of a call, from its usage."""

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
        return cls(config.prices())

    def __contains__(self, model: object) -> bool:
        return model in self._prices

    def __len__(self) -> int:
        return len(self._prices)

    def models(self) -> list[str]:
        return sorted(self._prices)

    def price(self, model: str) -> ModelPrice | None:
        return self._prices.get(model)

    def cost_usd(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """US dollars for a call to ``model`` ("provider/model"), to 8 decimals; ``None`` when the
        model has no price (the job still runs, its cost is unknown)."""
        price = self._prices.get(model)
        if price is None:
            return None
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("token counts must be non-negative")
        cost = (
            Decimal(prompt_tokens) * price.input_usd_per_mtok
            + Decimal(completion_tokens) * price.output_usd_per_mtok
        ) / _PER_TOKENS
        return float(cost.quantize(_COST_QUANTUM, rounding=ROUND_HALF_EVEN))

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models)"
