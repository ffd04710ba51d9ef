"""request_options and result_extra: the full request surface of a job (issue 12, item 1)

Revision ID: 0007_request_surface
Revises: 0006_request_id
Create Date: 2026-12-04 19:00:00

``request_options`` holds what a job asked besides messages, max_tokens and temperature (tools,
tool_choice, response_format, stop, seed, top_p, n), as the client spelled it; ``result_extra``
what its answer held besides text (tool calls, the choices of n > 1). Both nullable and null for
a plain job, so existing rows and plain jobs read exactly as before. The messages column is
unchanged: it is JSON already, and now may hold content parts and tool turns.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0007_request_surface"
down_revision: str | None = "0006_request_id"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("request_options", JSON, nullable=True))
        batch.add_column(sa.Column("result_extra", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result_extra")
        batch.drop_column("request_options")
