"""The life of an API key: issued (shown once, stored as SHA-256), listed, changed, rotated,
revoked, expired. The CLI (``llmq keys``) and the admin API (``/v1/admin/keys``) both call these,
so a rule lives here once.

::

    issue ──▶ active ──revoke──▶ revoked   (401 at once, on every API process)
                 │ └──expires_at passes──▶ expired   (401 from that instant)
                 └──rotate──▶ a new key with the same settings (rotated_from = the old one);
                              the old one revoked now, or expiring after a grace period

A key may carry its own limits (``rpm``, ``tpm``, ``concurrency``: they override its tenant's and
count for the key alone), its own budget, an expiry, and the models it may ask for
(``allowed_models``: exact names or shell-style patterns such as ``openai/*``; None: any).
"""

from __future__ import annotations

import fnmatch
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmq.models.base import isoformat, new_id
from llmq.models.tables import ApiKey, Tenant
from llmq.models.tenants import API_KEY_PREFIX, hash_api_key

# What a caller may set on a key (at issue, or later by update).
KEY_FIELDS = ("name", "expires_at", "allowed_models", "rpm", "tpm", "concurrency", "budget_usd")


class KeyNotFound(LookupError):
    pass


class TenantNotFound(LookupError):
    pass


def key_status(key: ApiKey, now: datetime) -> str:
    """``active`` | ``revoked`` | ``expired``."""
    if key.revoked_at is not None and key.revoked_at <= now:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def model_allowed(allowed: Iterable[str] | None, model: str) -> bool:
    """Whether a key allowed ``allowed`` (None: every model) may ask for ``model``. Patterns are
    shell-style (``openai/*``); ``auto`` (the router's choice) must be allowed by name or by
    ``*``."""
    if allowed is None:
        return True
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in allowed)


def key_public(key: ApiKey, tenant: Tenant, now: datetime) -> dict[str, Any]:
    """A key as the admin API and ``llmq keys list --json`` show it (never its hash)."""
    return {
        "id": key.id,
        "object": "api_key",
        "tenant_id": tenant.id,
        "tenant": tenant.name,
        "name": key.name,
        "prefix": key.prefix,
        "status": key_status(key, now),
        "created_at": isoformat(key.created_at),
        "expires_at": isoformat(key.expires_at),
        "revoked_at": isoformat(key.revoked_at),
        "allowed_models": key.allowed_models,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "concurrency": key.concurrency,
        "budget_usd": float(key.budget_usd) if key.budget_usd is not None else None,
        "rotated_from": key.rotated_from,
    }


def find_tenant(session: Session, ref: str) -> Tenant:
    """The tenant whose id or name is ``ref``."""
    tenant = session.get(Tenant, ref) or session.scalars(select(Tenant).where(Tenant.name == ref)).first()
    if tenant is None:
        raise TenantNotFound(ref)
    return tenant


def find_key(session: Session, ref: str) -> ApiKey:
    """The key whose id is ``ref``, or the key ``ref`` itself (``llmq_sk_…``)."""
    key = session.get(ApiKey, ref)
    if key is None and ref.startswith(API_KEY_PREFIX):
        key = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_api_key(ref))).first()
    if key is None:
        raise KeyNotFound(ref)
    return key


def issue_key(
    session: Session,
    tenant: Tenant,
    now: datetime,
    *,
    rotated_from: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> tuple[ApiKey, str]:
    """A new key of ``tenant`` with ``fields`` (of :data:`KEY_FIELDS`); returns it with the
    plaintext key, which is never stored."""
    plaintext = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id("key_", 10),
        tenant_id=tenant.id,
        key_hash=hash_api_key(plaintext),
        prefix=plaintext[: len(API_KEY_PREFIX) + 4],
        created_at=now,
        rotated_from=rotated_from,
    )
    _apply(key, fields or {})
    session.add(key)
    session.flush()
    return key, plaintext


def update_key(session: Session, ref: str, changes: Mapping[str, Any]) -> ApiKey:
    """Set the fields in ``changes`` (None clears one). A revoked key stays revoked."""
    key = find_key(session, ref)
    _apply(key, changes)
    session.flush()
    return key


def revoke_key(session: Session, ref: str, now: datetime) -> ApiKey:
    """Revoke a key from ``now`` on (a key already revoked keeps the time it was revoked)."""
    key = session.scalars(
        select(ApiKey).where(ApiKey.id == find_key(session, ref).id).with_for_update()
    ).one()
    if key.revoked_at is None or key.revoked_at > now:
        key.revoked_at = now
    session.flush()
    return key


def rotate_key(
    session: Session, ref: str, now: datetime, *, grace_s: float = 0.0
) -> tuple[ApiKey, str, ApiKey]:
    """A new key with the old one's settings; the old one revoked at once (``grace_s`` 0) or
    left working for ``grace_s`` more seconds, so that clients can move over. Returns the new
    key, its plaintext, and the old key. A revoked key cannot be rotated (its settings may be
    why it was revoked)."""
    old = session.scalars(
        select(ApiKey).where(ApiKey.id == find_key(session, ref).id).with_for_update()
    ).one()
    if key_status(old, now) == "revoked":
        raise KeyNotFound(f"{old.id} is revoked")
    tenant = session.get(Tenant, old.tenant_id)
    assert tenant is not None
    new, plaintext = issue_key(
        session, tenant, now, rotated_from=old.id, fields={f: getattr(old, f) for f in KEY_FIELDS}
    )
    if grace_s <= 0:
        old.revoked_at = now
    else:
        until = now + timedelta(seconds=grace_s)
        old.expires_at = until if old.expires_at is None else min(old.expires_at, until)
    session.flush()
    return new, plaintext, old


def list_keys(
    session: Session, now: datetime, *, tenant_id: str | None = None, include_inactive: bool = False
) -> list[tuple[ApiKey, Tenant]]:
    """Keys with their tenants, newest first: only the active ones unless ``include_inactive``."""
    query = select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    rows = [(k, t) for k, t in session.execute(query.order_by(ApiKey.created_at.desc(), ApiKey.id))]
    if include_inactive:
        return rows
    return [(k, t) for k, t in rows if key_status(k, now) == "active"]


def lookup_key(session: Session, api_key: str) -> tuple[Tenant, ApiKey] | None:
    """The key ``api_key`` and its tenant, whatever their state (the caller says why it is
    refused)."""
    row = session.execute(
        select(Tenant, ApiKey)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_api_key(api_key))
    ).first()
    return (row[0], row[1]) if row else None


def _apply(key: ApiKey, changes: Mapping[str, Any]) -> None:
    for name, value in changes.items():
        if name not in KEY_FIELDS:
            raise ValueError(f"not a key field: {name}")
        if name == "budget_usd" and value is not None:
            value = Decimal(str(value))
        if name == "allowed_models" and value is not None:
            value = list(value)
        setattr(key, name, value)
