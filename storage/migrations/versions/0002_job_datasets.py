"""Jobs record the data sets they read or write (a data set in use cannot be
deleted) and how they were asked to stop (pause keeps a checkpoint).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("dataset_ids", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("stop_mode", sa.String(10), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("stop_mode")
        batch.drop_column("dataset_ids")
