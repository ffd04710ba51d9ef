"""governance: tiers, key lifecycle, priority, budgets, per-attempt cost, usage rollups

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 01:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

import llmq.models.base
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MONEY = sa.Numeric(precision=18, scale=8)
_TOTAL = sa.Numeric(precision=20, scale=8)
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _counters() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")
        for name in (
            "calls",
            "failures",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cache_write_tokens",
        )
    ] + [sa.Column("cost_usd", _TOTAL, nullable=False, server_default="0")]


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        # Tenants that existed before tiers keep running as they did: no limits.
        batch.add_column(sa.Column("tier", sa.String(32), nullable=False, server_default="unlimited"))
        batch.add_column(sa.Column("rpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("concurrency", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("budget_usd", _MONEY, nullable=True))
        batch.add_column(sa.Column("user_budget_usd", _MONEY, nullable=True))
        batch.add_column(sa.Column("budget_period", sa.String(16), nullable=False, server_default="month"))
        batch.add_column(sa.Column("budget_thresholds", _JSON, nullable=True))
        batch.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("disabled_at", llmq.models.base.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("tenants") as batch:
        batch.alter_column("tier", server_default="free")
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("name", sa.String(128), nullable=True))
        batch.add_column(sa.Column("expires_at", llmq.models.base.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("allowed_models", _JSON, nullable=True))
        batch.add_column(sa.Column("rpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("concurrency", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("budget_usd", _MONEY, nullable=True))
        batch.add_column(sa.Column("rotated_from", sa.String(40), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.String(16), nullable=False, server_default="interactive"))
        batch.add_column(sa.Column("api_key_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("budget_wait", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("job_attempts") as batch:
        batch.add_column(sa.Column("cached_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cache_write_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cost_usd", _MONEY, nullable=True))
    with op.batch_alter_table("webhook_events") as batch:
        batch.alter_column("job_id", existing_type=sa.String(40), nullable=True)
    op.create_table(
        "usage_rollups",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("end_user", sa.String(128), nullable=False, server_default=""),
        sa.Column("api_key_id", sa.String(40), nullable=False, server_default=""),
        sa.Column("dims", sa.String(1024), nullable=False, server_default=""),
        *_counters(),
        sa.UniqueConstraint(
            "tenant_id", "day", "model", "end_user", "api_key_id", "dims", name="uq_usage_rollups_key"
        ),
    )
    op.create_table(
        "usage_totals",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        *_counters(),
    )
    op.create_table(
        "budget_alerts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id"), nullable=False, index=True),
        sa.Column("scope", sa.String(300), nullable=False),
        sa.Column("period_start", llmq.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("spent_usd", _MONEY, nullable=False),
        sa.Column("budget_usd", _MONEY, nullable=False),
        sa.Column("created_at", llmq.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("scope", "period_start", "threshold", name="uq_budget_alerts_scope_period"),
    )


def downgrade() -> None:
    op.drop_table("budget_alerts")
    op.drop_table("usage_totals")
    op.drop_table("usage_rollups")
    with op.batch_alter_table("webhook_events") as batch:
        batch.alter_column("job_id", existing_type=sa.String(40), nullable=False)
    with op.batch_alter_table("job_attempts") as batch:
        for name in ("cost_usd", "cache_write_tokens", "cached_tokens"):
            batch.drop_column(name)
    with op.batch_alter_table("jobs") as batch:
        for name in ("budget_wait", "api_key_id", "priority"):
            batch.drop_column(name)
    with op.batch_alter_table("api_keys") as batch:
        for name in ("rotated_from", "budget_usd", "concurrency", "tpm", "rpm", "allowed_models",
                     "expires_at", "name"):
            batch.drop_column(name)
    with op.batch_alter_table("tenants") as batch:
        for name in ("disabled_at", "webhook_url", "budget_thresholds", "budget_period", "user_budget_usd",
                     "budget_usd", "concurrency", "tpm", "rpm", "tier"):
            batch.drop_column(name)
