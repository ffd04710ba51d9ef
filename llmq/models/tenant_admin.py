"""Tenants as an operator manages them: create one on a tier, change its tier, limits, budgets
or webhook, disable it, list them. ``llmq tenants`` and ``/v1/admin/tenants`` both call these.

A tenant's ``rpm``/``tpm``/``concurrency`` override its tier's (None: the tier's); a disabled
tenant's keys answer 401 until it is enabled again, and its queued jobs still run (disable stops
new work, it does not destroy accepted work).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmq.models.base import isoformat, new_id
from llmq.models.keys import find_tenant
from llmq.models.tables import Tenant
from llmq.models.tenants import new_webhook_secret

TENANT_FIELDS = (
    "tier",
    "rpm",
    "tpm",
    "concurrency",
    "budget_usd",
    "user_budget_usd",
    "budget_period",
    "budget_thresholds",
    "webhook_url",
)
BUDGET_PERIODS = ("month", "week", "day")


class TenantExists(ValueError):
    pass


class UnknownTier(ValueError):
    pass


def tenant_public(tenant: Tenant, *, with_secret: bool = False) -> dict[str, Any]:
    """A tenant as the admin API and ``llmq tenants list --json`` show it; its webhook signing
    secret only when asked (at creation)."""
    view: dict[str, Any] = {
        "id": tenant.id,
        "object": "tenant",
        "name": tenant.name,
        "tier": tenant.tier,
        "rpm": tenant.rpm,
        "tpm": tenant.tpm,
        "concurrency": tenant.concurrency,
        "budget_usd": _money(tenant.budget_usd),
        "user_budget_usd": _money(tenant.user_budget_usd),
        "budget_period": tenant.budget_period,
        "budget_thresholds": tenant.budget_thresholds,
        "webhook_url": tenant.webhook_url,
        "disabled": tenant.disabled_at is not None,
        "created_at": isoformat(tenant.created_at),
    }
    if with_secret:
        view["webhook_secret"] = tenant.webhook_secret
    return view


def create_tenant(
    session: Session, name: str, now: datetime, *, tiers: Collection[str], fields: Mapping[str, Any]
) -> Tenant:
    """A new tenant called ``name``; ``tiers`` are the tier names the providers file knows."""
    if session.scalars(select(Tenant.id).where(Tenant.name == name)).first() is not None:
        raise TenantExists(name)
    tenant = Tenant(id=new_id("ten_", 10), name=name, webhook_secret=new_webhook_secret(), created_at=now)
    tenant.tier = "free"
    _apply(tenant, {"tier": fields.get("tier") or "free", **fields}, tiers, now)
    session.add(tenant)
    session.flush()
    return tenant


def update_tenant(
    session: Session, ref: str, changes: Mapping[str, Any], now: datetime, *, tiers: Collection[str]
) -> Tenant:
    """Set the fields in ``changes`` (None clears an override); ``disabled`` True/False
    disables or enables the tenant."""
    tenant = find_tenant(session, ref)
    _apply(tenant, changes, tiers, now)
    session.flush()
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.name)))


def _apply(tenant: Tenant, changes: Mapping[str, Any], tiers: Collection[str], now: datetime) -> None:
    for name, value in changes.items():
        if name == "disabled":
            if value and tenant.disabled_at is None:
                tenant.disabled_at = now
            elif not value:
                tenant.disabled_at = None
            continue
        if name not in TENANT_FIELDS:
            raise ValueError(f"not a tenant field: {name}")
        if name == "tier":
            if value is None:
                continue
            if value not in tiers:
                raise UnknownTier(f"unknown tier {value!r}; known tiers: {', '.join(sorted(tiers))}")
        if name == "budget_period" and value not in BUDGET_PERIODS:
            raise ValueError(f"budget_period must be one of {', '.join(BUDGET_PERIODS)}")
        if name in ("budget_usd", "user_budget_usd") and value is not None:
            value = Decimal(str(value))
        setattr(tenant, name, value)


def _money(value: Decimal | None) -> float | None:
    return float(value) if value is not None else None
