"""The breaker stage: a model whose circuit breaker is open is passed over (the next model of the
chain is tried); after its cooldown exactly one call goes through as the probe, and how that call
ends closes or reopens the breaker (``workers/breaker.py``, shared through Redis)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmq.tasks.gate.stages import CallEnd, Go, Refusal, Ticket

if TYPE_CHECKING:
    from llmq.tasks.runtime import WorkerRuntime


class BreakerStage:
    def admit(self, rt: WorkerRuntime, ticket: Ticket, model: str) -> Refusal | None:
        check = rt.breakers.check(model)
        if not check.allowed:
            return Refusal(check.retry_in_s, "circuit_open", try_next_model=True)
        ticket.probe = check.probe
        return None

    def undo(self, rt: WorkerRuntime, ticket: Ticket, model: str) -> None:
        if ticket.probe:  # the probe was not made: let the next caller probe at once
            rt.breakers.abandon_probe(model)
            ticket.probe = False

    def release(self, rt: WorkerRuntime, go: Go, end: CallEnd) -> None:
        if not end.sent or end.transient_failure is None:  # nothing learnt about the provider
            if go.probe:
                rt.breakers.abandon_probe(go.model)
            return
        rt.breakers.record(go.model, success=not end.transient_failure, probe=go.probe)
