"""request_id and traceparent: a job's correlation id and the W3C trace context of its submit

Revision ID: 0006_request_id
Revises: 0006_usage
Create Date: 2026-12-04 03:00:00

Both are written once, at submit, and read by every attempt and webhook delivery of the job, so
that its log lines share the request_id of the HTTP request that made it and its spans join the
submit span's trace however often it is retried, parked or re-sent by the sweeper. No index: the
columns are read with the row, never searched.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006_request_id"
down_revision: str | None = "0006_usage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("request_id", sa.String(128), nullable=True))
        batch.add_column(sa.Column("traceparent", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("traceparent")
        batch.drop_column("request_id")
