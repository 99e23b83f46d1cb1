"""dispatcher instances, leases, when a sensor's presence was heard, and the index of cancels
not yet told to their sensor

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 01:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNPUBLISHED_CANCEL_SQL = sa.text("published = false AND to_status = 5 AND attempt > 0")


def upgrade() -> None:
    op.create_table(
        "dispatcher_instances",
        sa.Column("instance", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("started_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("seen_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("session_expiry_s", sa.Integer(), nullable=False),
        sa.Column("recovered", sa.Integer(), nullable=False),
        sa.Column("dispatch_rate", sa.Float(), nullable=False),
        sa.Column("complete_rate", sa.Float(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("instance"),
    )
    leases = op.create_table(
        "leases",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("holder", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(leases, [{"name": "leader", "holder": None, "expires_at": None}])
    with op.batch_alter_table("sensors", schema=None) as batch_op:
        batch_op.add_column(sa.Column("presence_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.create_index(
        "ix_task_events_unpublished_cancels",
        "task_events",
        ["task_id"],
        sqlite_where=UNPUBLISHED_CANCEL_SQL,
        postgresql_where=UNPUBLISHED_CANCEL_SQL,
    )


def downgrade() -> None:
    op.drop_index("ix_task_events_unpublished_cancels", table_name="task_events")
    with op.batch_alter_table("sensors", schema=None) as batch_op:
        batch_op.drop_column("presence_at")
    op.drop_table("leases")
    op.drop_table("dispatcher_instances")
