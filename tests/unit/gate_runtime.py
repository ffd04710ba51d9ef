"""The worker runtime the gate's stages read, built on a real Redis for unit tests of the gate:
the limiter, breakers, cache, budget ledger and tenant limiter of ``WorkerRuntime``, with the
tenants' policies given by the test instead of read from a database."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import redis

from llmq.config.providers_file import ProvidersConfig
from llmq.config.settings import Settings
from llmq.models.records import ClaimedJob
from llmq.models.tenants import TenantPolicy
from llmq.workers.breaker import CircuitBreakers
from llmq.workers.budgets import BudgetLedger
from llmq.workers.cache import ResponseCache
from llmq.workers.pricing import PriceTable
from llmq.workers.ratelimit import RateLimiter
from llmq.workers.tenantlimit import TenantLimiter

PolicyOf = Callable[[str, "str | None"], "TenantPolicy | None"]


def gate_runtime(
    client: redis.Redis,
    providers: ProvidersConfig,
    policy_of: PolicyOf = lambda tenant_id, key_id: None,
    *,
    tenant_lease_s: float | None = None,
) -> Any:
    """``policy_of(tenant_id, key_id)``: the policy the stages see (default: none, so no tenant
    limits and no budgets)."""
    tenant_limiter = (
        TenantLimiter(client) if tenant_lease_s is None else TenantLimiter(client, lease_s=tenant_lease_s)
    )
    return SimpleNamespace(
        settings=Settings(),
        providers=providers,
        prices=PriceTable.from_config(providers),
        limiter=RateLimiter(client, providers, window_s=30.0),
        breakers=CircuitBreakers(client, providers),
        cache=ResponseCache(client, providers.cache),
        budgets=BudgetLedger(client),
        tenant_limiter=tenant_limiter,
        policies=SimpleNamespace(get=lambda tenant_id, key_id, session=None: policy_of(tenant_id, key_id)),
        db=None,  # the stages under test never reach the database
    )


def gate_claim(job_id: str, model: str, **values: Any) -> ClaimedJob:
    """A claimed job of tenant ``t`` on ``model``, one short user message; ``values`` override."""
    fields: dict[str, Any] = {
        "job_id": job_id,
        "tenant_id": "t",
        "lease_token": "lease",
        "attempt_number": 1,
        "max_attempts": 5,
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10,
        "temperature": None,
        "user": None,
        "deadline_at": None,
        "requested_model": model,
    }
    return ClaimedJob(**{**fields, **values})
