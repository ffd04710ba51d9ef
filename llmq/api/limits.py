"""``GET /v1/limits``: what the calling key may do and how much of it is in use now — its tier,
its requests per minute at submit, tokens per minute and calls in flight (each with the scope it
is counted in: the key's own, or the whole tenant's), its expiry and allowed models. A client
can pace itself from it instead of learning its limits from 429s."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response, current_app, g, jsonify

from llmq.api.auth import require_tenant
from llmq.api.context import app_db
from llmq.api.errors import ApiError
from llmq.api.tenant_limits import tenant_limiter
from llmq.models.base import isoformat
from llmq.models.tenants import load_policy
from llmq.workers.tenantlimit import scope_of

bp = Blueprint("limits", __name__)


@bp.get("/v1/limits")
@require_tenant
def limits() -> Response:
    tenant = g.tenant
    with app_db().session() as session:
        policy = load_policy(session, current_app.extensions["llmq.providers"], tenant.id, tenant.key_id)
    if policy is None:
        raise ApiError(404, "this key's tenant no longer exists")
    scopes = {
        name: scope_of(name, tenant.id, tenant.key_id, policy.key_limits)
        for name in ("rpm", "tpm", "concurrency")
    }
    limiter = tenant_limiter()
    try:
        used: dict[str, Any] = limiter.usage(
            rpm_scope=scopes["rpm"], tpm_scope=scopes["tpm"], slot_scope=scopes["concurrency"]
        )
    except redis.RedisError as exc:
        raise ApiError(503, f"the limits store is unavailable: {type(exc).__name__}") from None

    def whose(name: str) -> str:
        return "key" if scopes[name].startswith("key:") else "tenant"

    return jsonify(
        {
            "object": "limits",
            "tenant": tenant.name,
            "tier": policy.tier,
            "key": {
                "id": tenant.key_id,
                "expires_at": isoformat(tenant.expires_at),
                "allowed_models": list(tenant.allowed_models) if tenant.allowed_models is not None else None,
            },
            "window_s": limiter.window_s,
            "rpm": {"limit": policy.rpm, "used": used["requests"], "counted_for": whose("rpm")},
            "tpm": {"limit": policy.tpm, "used": used["tokens"], "counted_for": whose("tpm")},
            "concurrency": {
                "limit": policy.concurrency,
                "in_flight": used["in_flight"],
                "waiting": used["waiting"],
                "counted_for": whose("concurrency"),
            },
        }
    )
