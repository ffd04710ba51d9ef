"""The governance tables of the providers file: ``[tiers.<name>]`` (a tenant's limits and its
share of a busy model), ``[tenants]`` (the tier of a new tenant), ``[budgets]`` and ``[usage]``.

A tier sets, for every tenant on it, its requests per minute at submit (``rpm``, answered 429
with ``Retry-After`` past it), its tokens per minute (``tpm``) and its calls in flight
(``concurrency``), all fleet-wide in Redis, and its ``weight``: waiting jobs of different tenants
take a model's freed capacity round robin, a tenant of weight 4 taking four turns to one of
weight 1. A tenant's own ``rpm``/``tpm``/``concurrency`` override its tier's, and a key's override
its tenant's. The built-in tiers below hold unless the file redefines one of them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

Count = Annotated[int, Field(strict=True, ge=1)]
Fraction = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
TierName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


class TierConfig(BaseModel, extra="forbid", frozen=True):
    """One ``[tiers.<name>]`` table; a limit left out is no limit."""

    rpm: Count | None = None
    tpm: Count | None = None
    concurrency: Count | None = None
    weight: Count = 1


BUILTIN_TIERS: dict[str, TierConfig] = {
    "free": TierConfig(rpm=10, tpm=100_000, concurrency=5, weight=1),
    "pro": TierConfig(rpm=100, tpm=1_000_000, concurrency=50, weight=4),
    "enterprise": TierConfig(rpm=1_000, tpm=10_000_000, concurrency=500, weight=16),
    # For the operator's own services (and the benchmarks): no limits of its own.
    "unlimited": TierConfig(weight=16),
}


class TenantsConfig(BaseModel, extra="forbid", frozen=True):
    """``[tenants]``: what a tenant gets when nobody says otherwise."""

    default_tier: TierName = "free"


class BudgetsConfig(BaseModel, extra="forbid", frozen=True):
    """``[budgets]``: soft thresholds (fractions of a budget) that emit ``budget.threshold``
    once per period, unless a tenant sets its own."""

    thresholds: list[Fraction] = Field(default_factory=lambda: [0.8])


MetadataKey = Annotated[str, Field(min_length=1, max_length=64)]


class UsageConfig(BaseModel, extra="forbid", frozen=True):
    """``[usage]``: the metadata keys the usage rollup keeps, so that ``GET /v1/usage`` can
    group by ``metadata.<key>`` for them (a key with unbounded values, such as a document id,
    would make the rollup as large as the jobs: list only keys with few values)."""

    metadata_keys: list[MetadataKey] = Field(default_factory=list, max_length=8)
