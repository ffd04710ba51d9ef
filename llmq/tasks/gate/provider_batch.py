"""The provider-batch stage: a bulk job that will go through its provider's batch API (half the
price, hours not seconds) is parked to wait for the gatherer (``tasks/provider_batches.py``)
instead of being called now.

It applies when ``[provider_batches]`` covers the job's provider (``config/provider_batches.py``:
enabled, OpenAI or Anthropic itself), the job is ``bulk`` (a line of llmq's own ``/v1/batches``
is, and goes this way unless ``batch_lines = false``), is on the model it asked for (not a
fallback, not "auto"), asks for plain text (no tools, response format, images or tool turns:
a batch line carries messages, max_tokens, temperature and user), has not been in a provider
batch before, and its tenant has no budget
(a budget is reserved before a call and settled after it, and a batch may take 24 hours: such
jobs keep the normal path). The job waits ``queued`` with ``wait_reason = "provider_batch"``
until ``fallback_after_s`` after its submission: if no batch took it by then (beat stopped,
batching broken), the sweeper sends it again and it runs by the normal path.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from llmq.models.base import utcnow
from llmq.models.provider_batches import WAITING
from llmq.models.records import ClaimedJob
from llmq.tasks.gate.stages import Park, Ticket

if TYPE_CHECKING:
    from llmq.tasks.runtime import WorkerRuntime


def _plain(claim: ClaimedJob) -> bool:
    """Text messages and none of the request surface's options: what a batch line carries
    (``workers/providers/batch_formats.py``); a job with tools, a response format, images or
    tool turns keeps the normal path."""
    return claim.request_options is None and all(
        isinstance(m.get("content"), str) and set(m) <= {"role", "content"} for m in claim.messages
    )


class ProviderBatchStage:
    def admit(self, rt: WorkerRuntime, ticket: Ticket) -> Park | None:
        claim = ticket.claim
        config = rt.providers.provider_batches
        if not config.enabled or claim.priority != "bulk" or claim.provider_batch_id is not None:
            return None
        if claim.batch_id is not None and not config.batch_lines:
            return None  # a line of /v1/batches, and the config keeps those on the normal path
        model = ticket.candidates[0] if ticket.candidates else claim.model
        if model != claim.model or claim.created_at is None or not _plain(claim):
            return None
        provider = model.split("/", 1)[0]
        if not config.covers(provider) or rt.registry.batch_api(provider) is None:
            return None
        now = utcnow()
        until = claim.created_at + timedelta(seconds=config.fallback_after_s)
        if until <= now:
            return None  # waited its time: the normal path
        policy = rt.policies.get(claim.tenant_id, claim.api_key_id)
        if policy is not None and policy.has_budget:
            return None
        return Park(delay_s=(until - now).total_seconds(), reason=WAITING, until=until)
