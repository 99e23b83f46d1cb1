"""each rollout's count of targets and of targets started, kept instead of counted

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 21:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = """
UPDATE rollouts SET
    target_count = (SELECT count(*) FROM rollout_targets t WHERE t.rollout_id = rollouts.id),
    started_count = (
        SELECT count(*) FROM rollout_targets t WHERE t.rollout_id = rollouts.id AND t.task_id IS NOT NULL
    )
"""


def upgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("target_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False))
        batch_op.add_column(sa.Column("started_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False))
    op.execute(COUNTS)


def downgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("started_count")
        batch_op.drop_column("target_count")
