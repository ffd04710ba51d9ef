"""sweeper indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 13:49:20.748840
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_jobs_status_deadline', 'jobs', ['status', 'deadline_at'], unique=False)
    op.create_index('ix_jobs_status_enqueued', 'jobs', ['status', 'enqueued_at'], unique=False)
    op.create_index('ix_jobs_status_lease', 'jobs', ['status', 'lease_expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_jobs_status_lease', table_name='jobs')
    op.drop_index('ix_jobs_status_enqueued', table_name='jobs')
    op.drop_index('ix_jobs_status_deadline', table_name='jobs')
