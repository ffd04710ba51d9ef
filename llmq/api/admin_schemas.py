"""Request and response bodies of the admin API (``/v1/admin/tenants``, ``/v1/admin/keys``).

A PATCH applies the fields it names and only those: ``null`` clears a tenant's or a key's own
limit (it falls back to its tier's, or its tenant's), a field left out is left alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

Limit = Annotated[StrictInt, Field(ge=1, le=2_000_000_000)]
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=8)]
Fraction = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
TierName = Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
TenantName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
ModelPattern = Annotated[StrictStr, Field(min_length=1, max_length=200)]
Period = Literal["month", "week", "day"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def changes(self) -> dict[str, Any]:
        """The fields the request named, with their values (None included)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class TenantCreate(_Strict):
    name: TenantName
    tier: TierName | None = None  # default: [tenants] default_tier of the providers file
    rpm: Limit | None = None
    tpm: Limit | None = None
    concurrency: Limit | None = None
    budget_usd: Money | None = None
    user_budget_usd: Money | None = None
    budget_period: Period = "month"
    budget_thresholds: Annotated[list[Fraction], Field(max_length=10)] | None = None
    webhook_url: AnyHttpUrl | None = None


class TenantUpdate(_Strict):
    tier: TierName | None = None
    rpm: Limit | None = None
    tpm: Limit | None = None
    concurrency: Limit | None = None
    budget_usd: Money | None = None
    user_budget_usd: Money | None = None
    budget_period: Period | None = None
    budget_thresholds: Annotated[list[Fraction], Field(max_length=10)] | None = None
    webhook_url: AnyHttpUrl | None = None
    disabled: StrictBool | None = None


class KeyFields(_Strict):
    name: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    expires_at: AwareDatetime | None = None
    allowed_models: Annotated[list[ModelPattern], Field(max_length=100)] | None = None
    rpm: Limit | None = None
    tpm: Limit | None = None
    concurrency: Limit | None = None
    budget_usd: Money | None = None


class KeyCreate(KeyFields):
    tenant: Annotated[StrictStr, Field(min_length=1, max_length=128)]  # its id or name
    expires_in_s: Annotated[float, Field(gt=0, le=10 * 365 * 86400)] | None = None

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyCreate:
        if self.expires_at is not None and self.expires_in_s is not None:
            raise ValueError("give at most one of 'expires_at' and 'expires_in_s'")
        return self


class KeyUpdate(KeyFields):
    pass


class KeyRotate(_Strict):
    # How long the old key keeps working, so clients can move to the new one (0: revoked now).
    grace_s: Annotated[float, Field(ge=0, le=30 * 86400)] = 0.0


class KeysQuery(_Strict):
    tenant: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    include_inactive: bool = False


class TenantOut(BaseModel):
    id: str
    object: Literal["tenant"] = "tenant"
    name: str
    tier: str
    rpm: int | None
    tpm: int | None
    concurrency: int | None
    budget_usd: float | None
    user_budget_usd: float | None
    budget_period: str
    budget_thresholds: list[float] | None
    webhook_url: str | None
    disabled: bool
    created_at: str
    webhook_secret: str | None = None  # only in the answer that created the tenant


class TenantList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TenantOut]


class KeyOut(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    tenant_id: str
    tenant: str
    name: str | None
    prefix: str
    status: Literal["active", "revoked", "expired"]
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    allowed_models: list[str] | None
    rpm: int | None
    tpm: int | None
    concurrency: int | None
    budget_usd: float | None
    rotated_from: str | None


class IssuedKeyOut(KeyOut):
    api_key: str  # shown once: only its hash is stored
    replaced: KeyOut | None = None  # the key a rotation replaced


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyOut]


def expiry_of(spec: KeyCreate, now: datetime) -> datetime | None:
    """The expiry a new key asked for: a time, or seconds from ``now``."""
    if spec.expires_in_s is not None:
        return now + timedelta(seconds=spec.expires_in_s)
    return spec.expires_at
