"""Tenants, their API keys (stored as SHA-256 only) and their webhook signing secrets."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

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


def create_key(session: Session, *, tenant_name: str, now: datetime) -> IssuedKey:
    """Create the tenant if it is new, and a new API key for it. The key is returned once."""
    tenant = session.scalars(select(Tenant).where(Tenant.name == tenant_name)).first()
    if tenant is None:
        tenant = Tenant(
            id=new_id("ten_", 10),
            name=tenant_name,
            webhook_secret=new_webhook_secret(),
            created_at=now,
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


def tenant_for_key(session: Session, api_key: str) -> Tenant | None:
    row = session.execute(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_api_key(api_key), ApiKey.revoked_at.is_(None))
    ).first()
    return row[0] if row else None
