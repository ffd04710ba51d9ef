"""The provider-batch stage: a bulk job that will go through its provider's batch API (half the
price, hours not seconds) is parked to wait for the gatherer (``tasks/provider_batches.py``)
instead of being called now.

It applies when ``[provider_batches]`` covers the job's provider
(``config/provider_batches.py``: enabled, OpenAI or Anthropic itself), the job is ``bulk`` (a
line of llmq's own ``/v1/batches`` is, and goes this way unless ``batch_lines = false``), is on
the model it asked for (not a fallback, not "auto"), and has not been in a provider batch
before. A job with a budget waits too: its worst case at the batch price is reserved when its
batch is sent, and settled when its line comes back (``tasks/provider_batch_budgets.py``). The
job waits ``queued`` with ``wait_reason = "provider_batch"`` until ``fallback_after_s`` after
its submission: if no batch took it by then (beat stopped, batching broken), the sweeper sends
it again and it runs by the normal path. Its request surface does not matter: a line carries
tools, JSON output, images and tool turns as a normal call does
(``workers/providers/batch_formats.py``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from llmq.models.base import utcnow
from llmq.models.provider_batches import WAITING
from llmq.tasks.gate.stages import Park, Ticket

if TYPE_CHECKING:
    from llmq.tasks.runtime import WorkerRuntime


class ProviderBatchStage:
    def admit(self, rt: WorkerRuntime, ticket: Ticket) -> Park | None:
        claim = ticket.claim
        config = rt.providers.provider_batches
        if not config.enabled or claim.priority != "bulk" or claim.provider_batch_id is not None:
            return None
        if claim.batch_id is not None and not config.batch_lines:
            return None  # a line of /v1/batches, and the config keeps those on the normal path
        model = ticket.candidates[0] if ticket.candidates else claim.model
        if model != claim.model or claim.created_at is None:
            return None
        provider = model.split("/", 1)[0]
        if not config.covers(provider) or rt.registry.batch_api(provider) is None:
            return None
        now = utcnow()
        until = claim.created_at + timedelta(seconds=config.fallback_after_s)
        if until <= now:
            return None  # waited its time: the normal path
        return Park(delay_s=(until - now).total_seconds(), reason=WAITING, until=until)
