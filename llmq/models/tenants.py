"""Tenants, their API keys (stored as SHA-256 only), their webhook signing secrets, and the
policy (limits, weight, budgets) their jobs run under."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmq.config.providers_file import ProvidersConfig
from llmq.config.tiers import TierConfig
from llmq.models.base import new_id
from llmq.models.tables import ApiKey, Tenant

API_KEY_PREFIX = "llmq_sk_"


@dataclass(frozen=True)
class IssuedKey:
    tenant: str
    tenant_id: str
    api_key: str
    webhook_secret: str


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_webhook_secret() -> str:
    """``whsec_`` + base64 of 24 random bytes, as the Standard Webhooks libraries expect."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def create_key(session: Session, *, tenant_name: str, now: datetime, tier: str = "free") -> IssuedKey:
    """Create the tenant (on ``tier``) if it is new, and a new API key for it. The key is
    returned once."""
    tenant = session.scalars(select(Tenant).where(Tenant.name == tenant_name)).first()
    if tenant is None:
        tenant = Tenant(
            id=new_id("ten_", 10),
            name=tenant_name,
            webhook_secret=new_webhook_secret(),
            created_at=now,
            tier=tier,
        )
        session.add(tenant)
        session.flush()
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            id=new_id("key_", 10),
            tenant_id=tenant.id,
            key_hash=hash_api_key(api_key),
            prefix=api_key[: len(API_KEY_PREFIX) + 4],
            created_at=now,
        )
    )
    return IssuedKey(
        tenant=tenant.name, tenant_id=tenant.id, api_key=api_key, webhook_secret=tenant.webhook_secret
    )


def tenant_for_key(session: Session, api_key: str) -> tuple[Tenant, ApiKey] | None:
    row = session.execute(
        select(Tenant, ApiKey)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_api_key(api_key), ApiKey.revoked_at.is_(None))
    ).first()
    return (row[0], row[1]) if row else None


@dataclass(frozen=True)
class TenantPolicy:
    """What governs one tenant's jobs (submitted with one key): its tier's limits with the
    tenant's and the key's overrides applied, its weight in the models' lines, its budgets."""

    tenant_id: str
    tier: str
    rpm: int | None
    tpm: int | None
    concurrency: int | None
    weight: int
    budget_period: str  # month | week | day
    budget_usd: Decimal | None
    user_budget_usd: Decimal | None
    key_budget_usd: Decimal | None
    thresholds: tuple[float, ...]
    webhook_url: str | None
    # The limits (rpm, tpm, concurrency) the key sets itself: counted for that key alone, the
    # others for the whole tenant (workers/tenantlimit.py).
    key_limits: frozenset[str] = frozenset()
    # The models the key may use (None: any); the worker keeps fallbacks to these too.
    allowed_models: tuple[str, ...] | None = None

    @property
    def has_budget(self) -> bool:
        return any(b is not None for b in (self.budget_usd, self.user_budget_usd, self.key_budget_usd))


def policy_of(config: ProvidersConfig, tenant: Tenant, key: ApiKey | None) -> TenantPolicy:
    """The policy of ``tenant`` through ``key`` (None: the tenant's own), under ``config``'s
    tiers. A tier the file no longer defines has no limits (and weight 1): a job is never
    stopped because the operator renamed a tier."""
    tier = config.tier(tenant.tier) or TierConfig()

    def pick(name: str) -> int | None:
        for source in (key, tenant, tier):
            value = getattr(source, name, None) if source is not None else None
            if value is not None:
                return int(value)
        return None

    thresholds = (
        tenant.budget_thresholds if tenant.budget_thresholds is not None else config.budgets.thresholds
    )
    return TenantPolicy(
        tenant_id=tenant.id,
        tier=tenant.tier,
        rpm=pick("rpm"),
        tpm=pick("tpm"),
        concurrency=pick("concurrency"),
        weight=tier.weight,
        budget_period=tenant.budget_period,
        budget_usd=tenant.budget_usd,
        user_budget_usd=tenant.user_budget_usd,
        key_budget_usd=key.budget_usd if key is not None else None,
        thresholds=tuple(sorted(float(t) for t in thresholds)),
        webhook_url=tenant.webhook_url,
        key_limits=frozenset(
            name
            for name in ("rpm", "tpm", "concurrency")
            if key is not None and getattr(key, name) is not None
        ),
        allowed_models=(
            tuple(key.allowed_models) if key is not None and key.allowed_models is not None else None
        ),
    )


def load_policy(
    session: Session, config: ProvidersConfig, tenant_id: str, key_id: str | None
) -> TenantPolicy | None:
    """The policy of a tenant's jobs submitted with ``key_id`` (None when the tenant is gone)."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        return None
    key = session.get(ApiKey, key_id) if key_id is not None else None
    return policy_of(config, tenant, key if key is not None and key.tenant_id == tenant_id else None)
