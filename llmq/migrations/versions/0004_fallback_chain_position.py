"""fallback chain position

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 14:21:01.509473
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op



revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('current_model', sa.String(length=200), nullable=True))
    op.add_column('jobs', sa.Column('model_attempts', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    op.drop_column('jobs', 'model_attempts')
    op.drop_column('jobs', 'current_model')
