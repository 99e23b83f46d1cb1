"""rollouts and their targets, sensor labels, and the rollout a task was made by

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 08:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLLOUT_TASK_SQL = sa.text("rollout_id IS NOT NULL")
WAITING_TARGET_SQL = sa.text("task_id IS NULL")
LIVE_ROLLOUT_SQL = sa.text("state IN ('scheduled', 'running')")


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "rollouts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=True),
        sa.Column("name", text(length=100), nullable=False),
        sa.Column("type", text(length=32), nullable=False),
        sa.Column("file_id", text(length=36), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("timeout_s", sa.Integer(), nullable=False),
        sa.Column("sensors", sa.JSON(), nullable=True),
        sa.Column("selector", sa.JSON(), nullable=True),
        sa.Column("continuous", sa.Boolean(), nullable=False),
        sa.Column("max_in_flight", sa.Integer(), nullable=False),
        sa.Column("rate", sa.JSON(), nullable=True),
        sa.Column("abort", sa.JSON(), nullable=True),
        sa.Column("schedule", sa.JSON(), nullable=True),
        sa.Column("state", text(length=16), nullable=False),
        sa.Column("reason", text(length=1000), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("started_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("finished_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("next_start_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rollouts_customer", "rollouts", ["customer_id", "id"])
    op.create_index(
        "ix_rollouts_live", "rollouts", ["state", "id"], sqlite_where=LIVE_ROLLOUT_SQL, postgresql_where=LIVE_ROLLOUT_SQL
    )
    op.create_table(
        "rollout_targets",
        sa.Column("rollout_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("sensor_serial", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=True),
        sa.Column("added_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id", "sensor_serial"),
    )
    op.create_index(
        "ix_rollout_targets_waiting",
        "rollout_targets",
        ["rollout_id", "sensor_serial"],
        sqlite_where=WAITING_TARGET_SQL,
        postgresql_where=WAITING_TARGET_SQL,
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rollout_id", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_tasks_rollout_status",
        "tasks",
        ["rollout_id", "status_id"],
        sqlite_where=ROLLOUT_TASK_SQL,
        postgresql_where=ROLLOUT_TASK_SQL,
    )
    with op.batch_alter_table("sensors", schema=None) as batch_op:
        batch_op.add_column(sa.Column("labels", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))


def downgrade() -> None:
    with op.batch_alter_table("sensors", schema=None) as batch_op:
        batch_op.drop_column("labels")
    op.drop_index("ix_tasks_rollout_status", table_name="tasks")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("rollout_id")
    op.drop_index("ix_rollout_targets_waiting", table_name="rollout_targets")
    op.drop_table("rollout_targets")
    op.drop_index("ix_rollouts_live", table_name="rollouts")
    op.drop_index("ix_rollouts_customer", table_name="rollouts")
    op.drop_table("rollouts")
