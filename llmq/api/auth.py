"""Bearer API keys: each request's key is hashed and looked up; the tenant lands on ``g.tenant``.

Lookups are cached in the process (a database round trip saved on almost every request), and
the cache is dropped whenever a key or tenant changes anywhere: every change (``llmq keys
revoke``, the admin API) writes a new value to ``AUTH_EPOCH_KEY`` in Redis, and every request
reads it (one GET) before trusting its cached key. So a revoked key answers 401 at once on every
API process, not after a cache TTL. An expired key answers 401 from the instant it expires (the
cache keeps its expiry). When Redis cannot be read, the cache is trusted for ``KEY_CACHE_TTL_S``
at most, as before.

Refusals: 401 ``unauthorized`` (no key, unknown key), ``key_revoked``, ``key_expired``; 403
``tenant_disabled``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any, TypeVar, cast

import redis
import structlog
from flask import current_app, g, request

from llmq.api.context import app_db
from llmq.api.errors import ApiError
from llmq.models.base import utcnow
from llmq.models.keys import key_status, lookup_key
from llmq.models.tenants import hash_api_key, policy_of
from llmq.workers.keys import AUTH_EPOCH_KEY

F = TypeVar("F", bound=Callable[..., Any])
logger = structlog.get_logger(__name__)


KEY_CACHE_TTL_S = 10.0


@dataclass(frozen=True)
class AuthenticatedTenant:
    id: str
    name: str
    key_id: str | None = None
    expires_at: datetime | None = None
    allowed_models: tuple[str, ...] | None = None  # None: every model
    rpm: int | None = None  # requests per minute at submit, counted in rpm_scope
    rpm_scope: str = ""


_cache: dict[str, tuple[float, bytes | None, AuthenticatedTenant]] = {}
_cache_epoch: list[bytes | None] = [None]
_cache_lock = threading.Lock()


def bump_auth_epoch(client: redis.Redis) -> None:
    """Tell every API process that a key or tenant changed: their cached keys are dropped before
    the next request trusts them. Call it after the change is committed."""
    client.set(AUTH_EPOCH_KEY, uuid.uuid4().hex)


def _read_epoch() -> tuple[bool, bytes | None]:
    try:
        value = current_app.extensions["llmq.redis"].get(AUTH_EPOCH_KEY)
    except redis.RedisError as exc:
        logger.warning("auth_epoch_unavailable", error=type(exc).__name__)
        return False, None
    return True, cast(bytes | None, value)


def _lookup(api_key: str) -> AuthenticatedTenant:
    digest = hash_api_key(api_key)
    now = time.monotonic()
    known, epoch = _read_epoch()
    with _cache_lock:
        if known and epoch != _cache_epoch[0]:
            _cache.clear()
            _cache_epoch[0] = epoch
        hit = _cache.get(digest)
    if hit is not None and hit[0] > now and (not known or hit[1] == epoch):
        found = hit[2]
        if found.expires_at is None or found.expires_at > utcnow():
            return found
    found = _from_database(api_key)
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[digest] = (now + KEY_CACHE_TTL_S, epoch if known else _cache_epoch[0], found)
    return found


def _from_database(api_key: str) -> AuthenticatedTenant:
    with app_db().session() as session:
        found_pair = lookup_key(session, api_key)
        if found_pair is None:
            raise ApiError(401, "invalid API key")
        tenant, key = found_pair
        status = key_status(key, utcnow())
        if status == "revoked":
            raise ApiError(401, "this API key was revoked", type="key_revoked")
        if status == "expired":
            raise ApiError(401, "this API key has expired", type="key_expired")
        if tenant.disabled_at is not None:
            raise ApiError(403, f"tenant {tenant.name!r} is disabled", type="tenant_disabled")
        policy = policy_of(current_app.extensions["llmq.providers"], tenant, key)
        return AuthenticatedTenant(
            id=tenant.id,
            name=tenant.name,
            key_id=key.id,
            expires_at=key.expires_at,
            allowed_models=tuple(key.allowed_models) if key.allowed_models is not None else None,
            rpm=policy.rpm,
            rpm_scope=f"key:{key.id}" if "rpm" in policy.key_limits else f"tenant:{tenant.id}",
        )


def require_tenant(view: F) -> F:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'")
        g.tenant = _lookup(key.strip())
        return view(*args, **kwargs)

    return cast(F, wrapper)
