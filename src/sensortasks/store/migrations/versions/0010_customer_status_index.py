"""an index of each customer's tasks by status, for the console's overview

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 14:05:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_tasks_customer_status", "tasks", ["customer_id", "status_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_tasks_customer_status", table_name="tasks")
