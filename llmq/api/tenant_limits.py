"""What a tenant's key allows at submit, checked before a job is stored: its requests per minute
(fleet-wide, in Redis: ``workers/tenantlimit.py``), answered 429 with ``Retry-After`` past it,
and the models it may ask for, answered 403.

Only ``POST /v1/jobs`` counts against the rpm: reading jobs is free. A request refused for its
rate is not counted (a client that retries after ``Retry-After`` gets in). When Redis cannot be
read the submit is let through and logged: the job is durable and its calls are still held to
the tenant's tpm and concurrency by the workers, so an outage of the counter never loses work.
"""

from __future__ import annotations

import math

import redis
import structlog
from flask import current_app

from llmq.api.auth import AuthenticatedTenant
from llmq.api.errors import ApiError
from llmq.models.keys import model_allowed
from llmq.workers.tenantlimit import TenantLimiter

logger = structlog.get_logger(__name__)


def tenant_limiter() -> TenantLimiter:
    limiter = current_app.extensions.get("llmq.tenant_limiter")
    if limiter is None:
        limiter = TenantLimiter(current_app.extensions["llmq.redis"])
        current_app.extensions["llmq.tenant_limiter"] = limiter
    return limiter


def check_submit_rate(tenant: AuthenticatedTenant) -> None:
    if tenant.rpm is None:
        return
    try:
        wait_s = tenant_limiter().count_request(tenant.rpm_scope, tenant.rpm)
    except redis.RedisError as exc:
        logger.warning("tenant_rpm_unavailable", tenant_id=tenant.id, error=type(exc).__name__)
        return
    if wait_s is None:
        return
    retry_after = max(1, math.ceil(wait_s))
    whose = "this key" if tenant.rpm_scope.startswith("key:") else f"tenant {tenant.name!r}"
    raise ApiError(
        429,
        f"{whose} may submit {tenant.rpm} jobs per minute; retry in {retry_after} s",
        type="rate_limited",
        headers={"Retry-After": str(retry_after), "X-RateLimit-Limit-Requests": str(tenant.rpm)},
    )


def check_models_allowed(tenant: AuthenticatedTenant, models: list[str]) -> None:
    for model in models:
        if not model_allowed(tenant.allowed_models, model):
            allowed = ", ".join(tenant.allowed_models or ())
            raise ApiError(
                403, f"this key may not use model {model!r}; allowed: {allowed}", type="model_not_allowed"
            )
