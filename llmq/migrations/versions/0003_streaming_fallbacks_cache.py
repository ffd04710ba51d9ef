"""streaming, fallbacks, cache

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 14:09:06.350493
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('fallbacks', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))
    op.add_column('jobs', sa.Column('use_cache', sa.Boolean(), nullable=True))
    op.add_column('jobs', sa.Column('degraded_ok', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column('jobs', sa.Column('route_reason', sa.String(length=200), nullable=True))
    op.add_column('jobs', sa.Column('partial_text', sa.Text(), nullable=True))
    op.add_column('jobs', sa.Column('cached', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column('jobs', sa.Column('degraded', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    op.drop_column('jobs', 'degraded')
    op.drop_column('jobs', 'cached')
    op.drop_column('jobs', 'partial_text')
    op.drop_column('jobs', 'route_reason')
    op.drop_column('jobs', 'degraded_ok')
    op.drop_column('jobs', 'use_cache')
    op.drop_column('jobs', 'fallbacks')
