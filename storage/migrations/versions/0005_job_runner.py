"""Where a job runs: "local" (a subprocess of whoever submitted it) or "ray" (a
Ray job on a cluster, `runner_id` its submission id).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("runner", sa.String(10), nullable=False, server_default="local"))
        batch.add_column(sa.Column("runner_id", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("runner_id")
        batch.drop_column("runner")
