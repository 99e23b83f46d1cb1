"""sensor ownership

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 10:05:42.762383
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sensors", schema=None) as batch_op:
        batch_op.add_column(sa.Column("customer_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("registered_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.alter_column("online", existing_type=sa.Boolean(), nullable=True)
        batch_op.alter_column("last_seen", existing_type=sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
        batch_op.create_index(batch_op.f("ix_sensors_customer_id"), ["customer_id"], unique=False)



def downgrade() -> None:
    with op.batch_alter_table("sensors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sensors_customer_id"))
        batch_op.alter_column("last_seen", existing_type=sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False)
        batch_op.alter_column("online", existing_type=sa.Boolean(), nullable=False)
        batch_op.drop_column("registered_at")
        batch_op.drop_column("customer_id")

