"""Bearer API keys: each request's key is hashed and looked up; the tenant lands on ``g.tenant``."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import current_app, g, request

from llmq.api.errors import ApiError
from llmq.models.tenants import tenant_for_key

F = TypeVar("F", bound=Callable[..., Any])


def require_tenant(view: F) -> F:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'")
        with current_app.extensions["llmq.db"].session() as session:
            tenant = tenant_for_key(session, key.strip())
            if tenant is None:
                raise ApiError(401, "invalid API key")
            session.expunge(tenant)
        g.tenant = tenant
        return view(*args, **kwargs)

    return cast(F, wrapper)
