"""Bearer API keys: each request's key is hashed and looked up; the tenant lands on ``g.tenant``.

Lookups are cached in the process for ``KEY_CACHE_TTL_S`` (a revoked key stops working within
that time), which saves a database round trip on almost every request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast

from flask import current_app, g, request

from llmq.api.errors import ApiError
from llmq.models.tenants import hash_api_key, tenant_for_key

F = TypeVar("F", bound=Callable[..., Any])


KEY_CACHE_TTL_S = 10.0
_cache: dict[str, tuple[float, AuthenticatedTenant]] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class AuthenticatedTenant:
    id: str
    name: str
    key_id: str | None = None


def _lookup(api_key: str) -> AuthenticatedTenant:
    digest = hash_api_key(api_key)
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(digest)
    if hit is not None and hit[0] > now:
        return hit[1]
    with current_app.extensions["llmq.db"].session() as session:
        found_pair = tenant_for_key(session, api_key)
        if found_pair is None:
            raise ApiError(401, "invalid API key")
        tenant, key = found_pair
        found = AuthenticatedTenant(id=tenant.id, name=tenant.name, key_id=key.id)
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[digest] = (now + KEY_CACHE_TTL_S, found)
    return found


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
