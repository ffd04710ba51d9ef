"""The tenant limits stage: the tenant's (or its key's) fleet-wide tokens per minute and calls
in flight (``workers/tenantlimit.py``, in Redis), before the model's own limits.

It comes before the model's limits stage so that a tenant over its own allowance never takes a
place in a model's line: its jobs wait in the tenant's own line (first come, first served within
the tenant, the same rules as a model's line, except that its ``interactive`` jobs go before its
``bulk`` ones) and do not hold back other tenants. A refusal parks
the job with ``wait_reason = "tenant_limited"``; trying another model would not help, so the
chain is not walked further.

A model stage rather than a job stage because it must give back what it took when a later stage
refuses the model (``undo``) and when the call ends (``release``: the slot back, the tokens
settled to what the provider reported, or given back when the call never left).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmq.tasks.gate.limits import line_grace_s
from llmq.tasks.gate.stages import CallEnd, Go, Refusal, Ticket
from llmq.workers.tenantlimit import scope_of
from llmq.workers.tokens import estimate_tokens

if TYPE_CHECKING:
    from llmq.tasks.runtime import WorkerRuntime

REASON = "tenant_limited"


class TenantLimitsStage:
    def admit(self, rt: WorkerRuntime, ticket: Ticket, model: str) -> Refusal | None:
        claim = ticket.claim
        policy = rt.policies.get(claim.tenant_id, claim.api_key_id)
        if policy is None or (policy.tpm is None and policy.concurrency is None):
            return None
        tokens = estimate_tokens(
            claim.messages, claim.max_tokens, default_max_tokens=rt.settings.default_max_tokens
        )
        key_id, own = claim.api_key_id, policy.key_limits
        admission = rt.tenant_limiter.acquire(
            job_id=claim.job_id,
            holder=f"{claim.job_id}:{claim.lease_token}",
            tokens=tokens,
            tpm=policy.tpm,
            tpm_scope=scope_of("tpm", claim.tenant_id, key_id, own),
            concurrency=policy.concurrency,
            slot_scope=scope_of("concurrency", claim.tenant_id, key_id, own),
            grace_s=line_grace_s(rt.settings),
            bulk=claim.priority == "bulk",
        )
        if not admission.allowed:
            return Refusal(admission.retry_in_s, REASON, try_next_model=False)
        ticket.tenant_hold = admission.hold
        if admission.hold is not None and admission.hold.slot is not None:
            rt.tenant_limiter.start_renewing()
        return None

    def undo(self, rt: WorkerRuntime, ticket: Ticket, model: str) -> None:
        rt.tenant_limiter.undo(ticket.tenant_hold)
        ticket.tenant_hold = None

    def release(self, rt: WorkerRuntime, go: Go, end: CallEnd) -> None:
        rt.tenant_limiter.release(go.tenant_hold, sent=end.sent, total_tokens=end.total_tokens)
