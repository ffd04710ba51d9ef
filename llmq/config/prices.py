"""Prices in the providers file: what one million tokens of each kind cost, and when the figures
were taken.

A model's table gives ``input_usd_per_mtok`` and ``output_usd_per_mtok`` (both or neither) and,
optionally, the prices of the provider's prompt cache:

- ``cached_input_usd_per_mtok``: input tokens read from the cache (OpenAI ``cached_tokens``,
  Anthropic ``cache_read_input_tokens``);
- ``cache_write_usd_per_mtok``: input tokens written to the cache (Anthropic
  ``cache_creation_input_tokens``; OpenAI does not bill writes).

Left out, either costs the input price: conservative, a cost is never under-reported because a
cache price is missing. The top-level ``[prices] taken_on`` (a TOML date) says when the figures
were read off the providers' price pages; a model may carry its own ``prices_taken_on``. Both
are shown by ``GET /v1/providers`` so that whoever reads a cost knows how old its prices are.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field

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
    taken_on: dt.date | None = None

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

    def public(self) -> dict[str, object]:
        """The price as ``GET /v1/providers`` shows it (USD per million tokens, as numbers)."""
        return {
            "input_usd_per_mtok": float(self.input_usd_per_mtok),
            "output_usd_per_mtok": float(self.output_usd_per_mtok),
            "cached_input_usd_per_mtok": float(self.cached_input),
            "cache_write_usd_per_mtok": float(self.cache_write),
            "taken_on": self.taken_on.isoformat() if self.taken_on else None,
        }
