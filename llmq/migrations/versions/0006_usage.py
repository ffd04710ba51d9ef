"""usage: the answering call's prompt-cache tokens on the job

Revision ID: 0006_usage
Revises: 0005
Create Date: 2026-12-04 12:00:00

The rollup's (tenant_id, day) range scans are served by the leading columns of its unique key
(uq_usage_rollups_key), so no index is added.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006_usage"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("cached_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cache_write_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cache_write_tokens")
        batch.drop_column("cached_tokens")
