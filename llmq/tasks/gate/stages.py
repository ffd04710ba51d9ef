"""What the gate's stages share: the ticket a job carries through them, and their two shapes.

A **job stage** runs once per job, in order, before any model is tried (route: which models;
cache: an answer without a call; provider batch: a bulk job parked for its provider's batch
API). A **model stage** runs for each model of the job's chain, in order (breaker, limits): it
admits the model or refuses it, either for this model only (the next model of the chain is tried:
an open breaker) or for the job (it waits: no capacity). When a later model stage refuses, the
earlier ones that admitted the model ``undo`` what they took; when the call ends, every model
stage gives back what it took (``release``), in reverse order.

A model stage may also refuse a job for good (:class:`Refusal` with an ``error``: the budget has
no room for the call): the job fails without a call (:class:`Refuse`).

A new stage is one module with these methods, listed in ``llmq/tasks/gate/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from llmq.models.records import ClaimedJob
from llmq.workers.budgets import BudgetHold
from llmq.workers.cache import CachedAnswer
from llmq.workers.tenantlimit import TenantHold

if TYPE_CHECKING:
    from llmq.tasks.runtime import WorkerRuntime


@dataclass
class Ticket:
    """One job's way through the gate: what each stage found or took so far."""

    claim: ClaimedJob
    chain: list[str] = field(default_factory=list)  # the models to try, set by the route stage
    start: int = 0  # the chain's index of the model the job is on now
    route_reason: str | None = None
    cache_key: str | None = None
    passed_over: list[str] = field(default_factory=list)  # models refused before this one
    probe: bool = False  # this call is the breaker's probe
    reservation: str | None = None  # the limiter's request and tokens
    slot_holder: str | None = None  # the limiter's concurrency slot
    budget: BudgetHold | None = None  # the budget stage's reservation
    tenant_hold: TenantHold | None = None  # the tenant's tokens and slot (gate/tenant.py)

    @property
    def candidates(self) -> list[str]:
        return self.chain[self.start :]


@dataclass(frozen=True)
class Go:
    model: str
    route_reason: str | None
    reservation: str | None
    slot_holder: str | None
    probe: bool
    cache_key: str | None
    budget: BudgetHold | None = None
    tenant_hold: TenantHold | None = None


@dataclass(frozen=True)
class Park:
    delay_s: float
    reason: str  # rate_limited | circuit_open | tenant_limited | budget | provider_batch
    until: datetime | None = None  # when the wait ends, when known exactly (else now + delay_s)


@dataclass(frozen=True)
class Refuse:
    """The job fails without a call (``error_type``: ``budget_exceeded``)."""

    error_type: str
    message: str


@dataclass(frozen=True)
class Hit:
    model: str
    route_reason: str | None
    answer: CachedAnswer


Decision = Go | Park | Hit | Refuse


@dataclass(frozen=True)
class Refusal:
    wait_s: float
    reason: str
    try_next_model: bool  # True: only this model is refused; False: the job waits
    until: datetime | None = None  # the wait's exact end, when known
    error: str | None = None  # set: the job fails now, ``reason`` its error type, this its message


@dataclass(frozen=True)
class CallEnd:
    """How the call went, for the stages to give back what they took.

    ``sent``: the request reached the provider (False: it could not start, nothing was spent).
    ``transient_failure``: None when the call was stopped before it said anything about the
    provider's health (cancelled, shutdown)."""

    sent: bool
    transient_failure: bool | None
    total_tokens: int | None
    cost_usd: Decimal | None = None  # what the provider billed for the call, when known


class JobStage(Protocol):
    def admit(self, rt: WorkerRuntime, ticket: Ticket) -> Hit | Park | None: ...


class ModelStage(Protocol):
    def admit(self, rt: WorkerRuntime, ticket: Ticket, model: str) -> Refusal | None: ...

    def undo(self, rt: WorkerRuntime, ticket: Ticket, model: str) -> None: ...

    def release(self, rt: WorkerRuntime, go: Go, end: CallEnd) -> None: ...
