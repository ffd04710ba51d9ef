"""Prices in the providers file: what one million tokens of each kind cost, and when the figures
were taken.

A model's table gives ``input_usd_per_mtok`` and ``output_usd_per_mtok`` (both or neither) and,
optionally, the prices of the provider's prompt cache:

- ``cached_input_usd_per_mtok``: input tokens read from the cache (OpenAI ``cached_tokens``,
  Anthropic ``cache_read_input_tokens``);
- ``cache_write_usd_per_mtok``: input tokens written to the cache (Anthropic
  ``cache_creation_input_tokens``; OpenAI does not bill writes).

And the price of the provider's batch API (``tasks/provider_batches.py``), both or neither:
``batch_input_usd_per_mtok``, ``batch_output_usd_per_mtok``. Left out, each is half the standard
price, as OpenAI's Batch API and Anthropic's Message Batches API both bill; the cache prices of a
batch call are half theirs too.

Left out, either cache price costs the input price: conservative, a cost is never under-reported because a
cache price is missing. The top-level ``[prices] taken_on`` (a TOML date) says when the figures
were read off the providers' price pages; a model may carry its own ``prices_taken_on``. Both
are shown by ``GET /v1/providers`` so that whoever reads a cost knows how old its prices are.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field, model_validator

UsdPerMtok = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class PricesConfig(BaseModel, extra="forbid", frozen=True):
    """``[prices]``: the date the file's prices were taken (None: not stated)."""

    taken_on: dt.date | None = None


class ModelPrice(BaseModel, extra="forbid", frozen=True):
    """List price of one model, in US dollars per million tokens of each kind."""

    input_usd_per_mtok: UsdPerMtok
    output_usd_per_mtok: UsdPerMtok
    cached_input_usd_per_mtok: UsdPerMtok | None = None  # None: the input price
    cache_write_usd_per_mtok: UsdPerMtok | None = None  # None: the input price
    batch_input_usd_per_mtok: UsdPerMtok | None = None  # None: half input_usd_per_mtok
    batch_output_usd_per_mtok: UsdPerMtok | None = None  # None: half output_usd_per_mtok
    taken_on: dt.date | None = None

    @model_validator(mode="after")
    def _both_batch_prices_or_neither(self) -> ModelPrice:
        if (self.batch_input_usd_per_mtok is None) != (self.batch_output_usd_per_mtok is None):
            raise ValueError("give both batch_input_usd_per_mtok and batch_output_usd_per_mtok, or neither")
        return self

    @property
    def cached_input(self) -> Decimal:
        return (
            self.input_usd_per_mtok
            if self.cached_input_usd_per_mtok is None
            else self.cached_input_usd_per_mtok
        )

    @property
    def cache_write(self) -> Decimal:
        return (
            self.input_usd_per_mtok
            if self.cache_write_usd_per_mtok is None
            else self.cache_write_usd_per_mtok
        )

    def batch(self) -> ModelPrice:
        """The price of a call through the provider's batch API: the given batch prices, else
        half of each standard price (the cache prices are halved as well)."""
        input_price = self.batch_input_usd_per_mtok
        output_price = self.batch_output_usd_per_mtok
        if input_price is None or output_price is None:
            input_price, output_price = self.input_usd_per_mtok * _HALF, self.output_usd_per_mtok * _HALF
        ratio = input_price / self.input_usd_per_mtok if self.input_usd_per_mtok else _HALF
        return ModelPrice(
            input_usd_per_mtok=input_price,
            output_usd_per_mtok=output_price,
            cached_input_usd_per_mtok=self.cached_input * ratio,
            cache_write_usd_per_mtok=self.cache_write * ratio,
            taken_on=self.taken_on,
        )

    def public(self) -> dict[str, object]:
        """The price as ``GET /v1/providers`` shows it (USD per million tokens, as numbers)."""
        return {
            "input_usd_per_mtok": float(self.input_usd_per_mtok),
            "output_usd_per_mtok": float(self.output_usd_per_mtok),
            "cached_input_usd_per_mtok": float(self.cached_input),
            "cache_write_usd_per_mtok": float(self.cache_write),
            "batch_input_usd_per_mtok": float(self.batch().input_usd_per_mtok),
            "batch_output_usd_per_mtok": float(self.batch().output_usd_per_mtok),
            "taken_on": self.taken_on.isoformat() if self.taken_on else None,
        }


_HALF = Decimal("0.5")
