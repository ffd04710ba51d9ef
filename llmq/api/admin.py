"""The admin API, for operators without a shell on the host: ``/v1/admin/tenants`` and
``/v1/admin/keys``, guarded by ``Authorization: Bearer $LLMQ_ADMIN_TOKEN`` (unset: 403, the
admin API is off). The views validate, call one domain function (``models/tenant_admin.py``,
``models/keys.py``, the same ones ``llmq tenants`` and ``llmq keys`` call) and, after the commit,
tell every API process to drop its cached keys (``bump_auth_epoch``), so a revoked key answers
401 at once everywhere.

::

    GET  /v1/admin/tenants                 POST  /v1/admin/tenants
    GET  /v1/admin/tenants/<id or name>    PATCH /v1/admin/tenants/<id or name>
    GET  /v1/admin/keys?tenant=&include_inactive=    POST /v1/admin/keys
    GET  /v1/admin/keys/<id>               PATCH /v1/admin/keys/<id>
    POST /v1/admin/keys/<id>/revoke        POST  /v1/admin/keys/<id>/rotate
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

import redis
import structlog
from flask import Blueprint, Response, current_app, jsonify, request

from llmq.api.admin_schemas import (
    KeyCreate,
    KeyRotate,
    KeysQuery,
    KeyUpdate,
    TenantCreate,
    TenantUpdate,
    expiry_of,
)
from llmq.api.auth import bump_auth_epoch
from llmq.api.context import app_db, app_settings
from llmq.api.errors import ApiError
from llmq.models.base import utcnow
from llmq.models.keys import (
    KeyNotFound,
    TenantNotFound,
    find_key,
    find_tenant,
    issue_key,
    key_public,
    list_keys,
    revoke_key,
    rotate_key,
    update_key,
)
from llmq.models.tables import Tenant
from llmq.models.tenant_admin import (
    TenantExists,
    UnknownTier,
    create_tenant,
    list_tenants,
    tenant_public,
    update_tenant,
)
from llmq.webhooks.ssrf import BlockedDestination, check_at_submit

F = TypeVar("F", bound=Callable[..., Any])
logger = structlog.get_logger(__name__)
bp = Blueprint("admin", __name__)


def require_admin(view: F) -> F:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = app_settings().admin_token
        if token is None:
            raise ApiError(
                403, "the admin API is off: set LLMQ_ADMIN_TOKEN to turn it on", type="admin_disabled"
            )
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise ApiError(401, "send 'Authorization: Bearer <admin token>'", type="invalid_admin_token")
        return view(*args, **kwargs)

    return cast(F, wrapper)


def _tiers() -> set[str]:
    return set(current_app.extensions["llmq.providers"].all_tiers())


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise ApiError(422, "the request body must be a JSON object", type="validation_error")
    return body


def _changed() -> None:
    """After a commit that changed a key or a tenant: every API process drops its cached keys."""
    try:
        bump_auth_epoch(current_app.extensions["llmq.redis"])
    except redis.RedisError as exc:  # the cached keys still lapse within KEY_CACHE_TTL_S
        logger.warning("auth_epoch_bump_failed", error=type(exc).__name__)


def _check_webhook(changes: dict[str, Any]) -> dict[str, Any]:
    if changes.get("webhook_url") is not None:
        url = str(changes["webhook_url"])
        changes["webhook_url"] = url
        if not app_settings().webhook_allow_private:
            try:
                check_at_submit(url)
            except BlockedDestination as exc:
                raise ApiError(422, f"webhook_url refused: {exc}", type="validation_error") from None
    return changes


def _tenant(session: Any, ref: str) -> Tenant:
    try:
        return find_tenant(session, ref)
    except TenantNotFound:
        raise ApiError(404, f"no tenant {ref!r}") from None


# --- tenants ---------------------------------------------------------------------------------


@bp.get("/v1/admin/tenants")
@require_admin
def tenants_list() -> Response:
    with app_db().session() as session:
        data = [tenant_public(t) for t in list_tenants(session)]
    return jsonify({"object": "list", "data": data})


@bp.post("/v1/admin/tenants")
@require_admin
def tenants_create() -> tuple[Response, int]:
    spec = TenantCreate.model_validate(_body())
    fields = _check_webhook(spec.changes())
    fields.pop("name", None)
    fields["tier"] = spec.tier or current_app.extensions["llmq.providers"].tenants.default_tier
    fields["budget_period"] = spec.budget_period
    try:
        with app_db().transaction() as session:
            view = tenant_public(
                create_tenant(session, spec.name, utcnow(), tiers=_tiers(), fields=fields), with_secret=True
            )
    except TenantExists:
        raise ApiError(409, f"a tenant named {spec.name!r} exists already", type="conflict") from None
    except UnknownTier as exc:
        raise ApiError(422, str(exc), type="validation_error") from None
    logger.info("tenant_created", tenant_id=view["id"], tier=view["tier"])
    return jsonify(view), 201


@bp.get("/v1/admin/tenants/<ref>")
@require_admin
def tenants_read(ref: str) -> Response:
    with app_db().session() as session:
        return jsonify(tenant_public(_tenant(session, ref)))


@bp.patch("/v1/admin/tenants/<ref>")
@require_admin
def tenants_update(ref: str) -> Response:
    spec = TenantUpdate.model_validate(_body())
    changes = _check_webhook(spec.changes())
    if "budget_period" in changes and changes["budget_period"] is None:
        raise ApiError(422, "budget_period: give month, week or day", type="validation_error")
    try:
        with app_db().transaction() as session:
            _tenant(session, ref)
            view = tenant_public(update_tenant(session, ref, changes, utcnow(), tiers=_tiers()))
    except UnknownTier as exc:
        raise ApiError(422, str(exc), type="validation_error") from None
    _changed()
    logger.info("tenant_updated", tenant_id=view["id"], fields=sorted(changes))
    return jsonify(view)


# --- keys ------------------------------------------------------------------------------------


@bp.get("/v1/admin/keys")
@require_admin
def keys_list() -> Response:
    query = KeysQuery.model_validate(request.args.to_dict())
    now = utcnow()
    with app_db().session() as session:
        tenant_id = _tenant(session, query.tenant).id if query.tenant else None
        rows = list_keys(session, now, tenant_id=tenant_id, include_inactive=query.include_inactive)
        data = [key_public(k, t, now) for k, t in rows]
    return jsonify({"object": "list", "data": data})


@bp.post("/v1/admin/keys")
@require_admin
def keys_create() -> tuple[Response, int]:
    spec = KeyCreate.model_validate(_body())
    now = utcnow()
    fields = {k: v for k, v in spec.changes().items() if k not in ("tenant", "expires_in_s")}
    fields["expires_at"] = expiry_of(spec, now)
    with app_db().transaction() as session:
        tenant = _tenant(session, spec.tenant)
        key, plaintext = issue_key(session, tenant, now, fields=fields)
        view = {**key_public(key, tenant, now), "api_key": plaintext}
    logger.info("key_created", key_id=view["id"], tenant_id=view["tenant_id"])
    return jsonify(view), 201


@bp.get("/v1/admin/keys/<key_id>")
@require_admin
def keys_read(key_id: str) -> Response:
    now = utcnow()
    with app_db().session() as session:
        key = _key(session, key_id)
        return jsonify(key_public(key, _tenant(session, key.tenant_id), now))


@bp.patch("/v1/admin/keys/<key_id>")
@require_admin
def keys_update(key_id: str) -> Response:
    spec = KeyUpdate.model_validate(_body())
    now = utcnow()
    with app_db().transaction() as session:
        _key(session, key_id)
        key = update_key(session, key_id, spec.changes())
        view = key_public(key, _tenant(session, key.tenant_id), now)
    _changed()
    logger.info("key_updated", key_id=key_id, fields=sorted(spec.changes()))
    return jsonify(view)


@bp.post("/v1/admin/keys/<key_id>/revoke")
@require_admin
def keys_revoke(key_id: str) -> Response:
    now = utcnow()
    with app_db().transaction() as session:
        _key(session, key_id)
        key = revoke_key(session, key_id, now)
        view = key_public(key, _tenant(session, key.tenant_id), now)
    _changed()
    logger.info("key_revoked", key_id=key_id)
    return jsonify(view)


@bp.post("/v1/admin/keys/<key_id>/rotate")
@require_admin
def keys_rotate(key_id: str) -> tuple[Response, int]:
    raw = request.get_data()
    spec = KeyRotate.model_validate(_body() if raw.strip() else {})
    now = utcnow()
    try:
        with app_db().transaction() as session:
            _key(session, key_id)
            new, plaintext, old = rotate_key(session, key_id, now, grace_s=spec.grace_s)
            tenant = _tenant(session, new.tenant_id)
            view = {
                **key_public(new, tenant, now),
                "api_key": plaintext,
                "replaced": key_public(old, tenant, now),
            }
    except KeyNotFound as exc:
        raise ApiError(409, f"cannot rotate: {exc}", type="key_revoked") from None
    _changed()
    logger.info("key_rotated", key_id=key_id, new_key_id=view["id"], grace_s=spec.grace_s)
    return jsonify(view), 201


def _key(session: Any, key_id: str) -> Any:
    try:
        return find_key(session, key_id)
    except KeyNotFound:
        raise ApiError(404, f"no key {key_id!r}") from None
