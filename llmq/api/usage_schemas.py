"""The pydantic models of ``GET /v1/usage``: its query, and its answer for ``/openapi.json``."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_DAYS = 366  # one query covers at most a year of days (checked by the view, after defaults)


class UsageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: date | None = Field(default=None, alias="from", description="first UTC day (default: the 1st)")
    end: date | None = Field(default=None, alias="to", description="last UTC day, included (default: today)")
    group_by: str | None = Field(
        default=None,
        max_length=500,
        description="comma-separated: day, model, user, key, metadata.<key> ([usage] metadata_keys)",
    )


class UsageCounters(BaseModel):
    model_config = ConfigDict(extra="allow")  # the group's keys: day, model, user, key, metadata.<k>

    calls: int  # attempts that reached the provider (a retried job counts each try)
    failures: int  # of them, the ones that failed
    prompt_tokens: int  # every input token, cached and cache-written ones included
    completion_tokens: int
    cached_tokens: int  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int  # of prompt_tokens: written to it
    cost_usd: float  # what the provider billed, at the providers file's prices


class UsageOut(BaseModel):
    object: Literal["list"] = "list"
    from_: str = Field(alias="from")
    to: str
    group_by: list[str]
    data: list[UsageCounters]
    total: UsageCounters


USAGE_PARAMETERS = [
    {"name": name, "in": "query", "required": False, "schema": schema, "description": description}
    for name, schema, description in (
        ("from", {"type": "string", "format": "date"}, "first UTC day (default: the 1st of this month)"),
        ("to", {"type": "string", "format": "date"}, "last UTC day, included (default: today)"),
        (
            "group_by",
            {"type": "string"},
            "comma-separated: day, model, user, key, metadata.<key> (a key of [usage] metadata_keys)",
        ),
    )
]
