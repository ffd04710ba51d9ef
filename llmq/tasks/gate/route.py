"""The route stage: which models a job may be served by, in order — the one it asked for (or the
router's choice for ``"auto"``), then its fallbacks — and the one it is on now.

A job submitted with a key limited to some models (``allowed_models``) falls back only to those:
the fallbacks the providers file adds are dropped when the key may not use them (the API refused
at submit any model or fallback the job itself named that the key may not use)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmq.config.model_ids import split_model
from llmq.models.keys import model_allowed
from llmq.models.records import ClaimedJob
from llmq.tasks.gate.stages import Hit, Ticket
from llmq.workers.capabilities import unsupported
from llmq.workers.providers.registry import UnknownProviderError
from llmq.workers.routing import choose_model, fallback_chain

if TYPE_CHECKING:
    from llmq.tasks.runtime import WorkerRuntime


def primary_model(rt: WorkerRuntime, claim: ClaimedJob) -> tuple[str, str | None]:
    """The job's first-choice model: the one it asked for, or the router's choice for "auto"."""
    if claim.requested_model != "auto":
        return claim.requested_model, None
    model, reason = choose_model(claim.messages, rt.providers.routing)
    return model, f"auto: {reason}"


def model_chain(rt: WorkerRuntime, claim: ClaimedJob) -> tuple[list[str], str | None]:
    primary, reason = primary_model(rt, claim)
    chain = [primary, *fallback_chain(primary, claim.fallbacks, rt.providers)]
    if claim.request_options is not None:
        chain = _capable_chain(rt, claim, chain)
    return _allowed_chain(rt, claim, chain), reason


def _capable_chain(rt: WorkerRuntime, claim: ClaimedJob, chain: list[str]) -> list[str]:
    """The fallbacks whose provider can serve the job's options (tools, seed, n, ...). The API
    refused at submit a model or fallback the job named itself that cannot; a fallback the
    providers file adds that cannot is skipped here rather than called to fail."""
    capable = [chain[0]]
    for model in chain[1:]:
        try:
            provider, _ = split_model(model)
            kind = rt.registry.spec(provider).kind
        except (ValueError, UnknownProviderError):
            continue
        if not unsupported(kind, claim.request_options):
            capable.append(model)
    return capable


class RouteStage:
    def admit(self, rt: WorkerRuntime, ticket: Ticket) -> Hit | None:
        chain, ticket.route_reason = model_chain(rt, ticket.claim)
        current = ticket.claim.current_model or chain[0]
        if current not in chain:
            chain = [current, *chain]
        ticket.chain, ticket.start = chain, chain.index(current)
        return None


def _allowed_chain(rt: WorkerRuntime, claim: ClaimedJob, chain: list[str]) -> list[str]:
    if claim.api_key_id is None:
        return chain
    policy = rt.policies.get(claim.tenant_id, claim.api_key_id)
    if policy is None or policy.allowed_models is None:
        return chain
    return [chain[0], *(m for m in chain[1:] if model_allowed(policy.allowed_models, m))]
