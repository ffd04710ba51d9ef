"""``[provider_batches]`` of the providers file: which bulk jobs go through the providers' own
batch APIs (OpenAI's Batch API, Anthropic's Message Batches API) at their batch price, and the
pace of gathering, sending and polling them (``tasks/provider_batches.py``).

A job goes by provider batch when batching is ``enabled``, the job is ``priority: "bulk"``, its
model's provider is listed in ``providers`` (and is an OpenAI or Anthropic endpoint), its tenant
has no budget (a reservation cannot be held for the hours a batch may take: such jobs keep the
normal path, where the budget is reserved before the call) and it has not been in a provider
batch before (a line that failed or expired is retried by the normal path, never by a second
batch).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, StrictBool


def _number(value: object) -> object:
    if isinstance(value, bool | str):
        raise ValueError("must be a number")
    return value


Seconds = Annotated[float, BeforeValidator(_number), Field(ge=0, allow_inf_nan=False)]
Count = Annotated[int, Field(strict=True, ge=1)]
BatchProvider = Literal["openai", "anthropic"]
_BOTH: tuple[BatchProvider, ...] = ("openai", "anthropic")


class ProviderBatchesConfig(BaseModel, extra="forbid", frozen=True):
    enabled: StrictBool = False
    providers: list[BatchProvider] = Field(default_factory=lambda: list(_BOTH))
    batch_lines: StrictBool = True  # the lines of /v1/batches (bulk jobs) go by provider batch too
    min_jobs: Count = 100  # a model's waiting bulk jobs are sent once this many wait...
    max_wait_s: Seconds = 300.0  # ... or once the oldest has waited this long
    max_jobs: Annotated[int, Field(strict=True, ge=1, le=50_000)] = 10_000  # per provider batch
    poll_interval_s: Seconds = 60.0  # how often a sent batch is asked how it is doing
    # A bulk job no batch has taken within this long of its submission (beat stopped, batching
    # broken) runs by the normal path: batching never strands a job.
    fallback_after_s: Seconds = 3600.0
    # The jobs of a sent batch are leased this long past each poll: a poller gone for longer
    # (beat down) hands them back to the normal path through the sweeper.
    lease_s: Annotated[float, BeforeValidator(_number), Field(gt=0, allow_inf_nan=False)] = 3600.0
    # A batch left half-sent this long (its sender died between two steps) is taken over.
    step_timeout_s: Annotated[float, BeforeValidator(_number), Field(gt=0, allow_inf_nan=False)] = 300.0

    def covers(self, provider: str) -> bool:
        return self.enabled and provider in self.providers
