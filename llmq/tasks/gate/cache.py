"""The cache stage: a job that uses the response cache and finds its answer there is answered
without a call (``Hit``); otherwise it carries its cache key on, so that its answer is stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmq.models.records import ClaimedJob
from llmq.tasks.gate.stages import Hit, Ticket

if TYPE_CHECKING:
    from llmq.tasks.runtime import WorkerRuntime


def request_params(claim: ClaimedJob, default_max_tokens: int) -> dict[str, Any]:
    """What the call will be asked besides the messages: a job without ``max_tokens`` is sent the
    default, so it shares a cache key with a job that asked for the default, and with no job made
    under another default."""
    max_tokens = claim.max_tokens if claim.max_tokens is not None else default_max_tokens
    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": claim.temperature}
    if claim.request_options is not None:  # tools, response_format, stop, seed, top_p, n
        params["options"] = claim.request_options
    return params


class CacheStage:
    def admit(self, rt: WorkerRuntime, ticket: Ticket) -> Hit | None:
        claim = ticket.claim
        if not rt.cache.wanted(claim.use_cache, claim.temperature):
            return None
        model = ticket.chain[0]
        params = request_params(claim, rt.settings.default_max_tokens)
        ticket.cache_key = rt.cache.key(model, claim.messages, params, claim.tenant_id)
        answer = rt.cache.get(ticket.cache_key)
        if answer is None:
            return None
        return Hit(model=model, route_reason=ticket.route_reason, answer=answer)
