"""provider_batches: bulk jobs sent through the providers' batch APIs, and what the job records of it

Revision ID: 0010_provider_batches
Revises: 0006_request_id
Create Date: 2026-12-04 19:20:00

A ``provider_batches`` row is one batch sent to OpenAI's Batch API or Anthropic's Message Batches
API: its remote ids (recorded before anything relies on them), its state and when it is polled
next. A job records the batch that took it (``provider_batch_id``, never cleared: a job goes in
one provider batch at most), whether its result came from it (``via_batch``) and what that saved
against the standard price (``batch_saved_usd``). Additive only: new table, nullable columns.
"""

from collections.abc import Sequence

import sqlalchemy as sa

import llmq.models.base
from alembic import op

revision: str = "0010_provider_batches"
down_revision: str | None = "0007_request_surface"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provider_batches",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("lease_token", sa.String(40), nullable=False),
        sa.Column("job_count", sa.Integer(), nullable=False),
        sa.Column("remote_id", sa.String(128), nullable=True),
        sa.Column("remote_status", sa.String(32), nullable=True),
        sa.Column("input_file_id", sa.String(128), nullable=True),
        sa.Column("output_file_id", sa.String(128), nullable=True),
        sa.Column("error_file_id", sa.String(128), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", llmq.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", llmq.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("submitted_at", llmq.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("expires_at", llmq.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("next_poll_at", llmq.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", llmq.models.base.UTCDateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_provider_batches_state_poll", "provider_batches", ["state", "next_poll_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("provider_batch_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("via_batch", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("batch_saved_usd", sa.Numeric(18, 8), nullable=True))
        batch.create_index("ix_jobs_provider_batch", ["provider_batch_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_provider_batch")
        batch.drop_column("batch_saved_usd")
        batch.drop_column("via_batch")
        batch.drop_column("provider_batch_id")
    op.drop_index("ix_provider_batches_state_poll", table_name="provider_batches")
    op.drop_table("provider_batches")
