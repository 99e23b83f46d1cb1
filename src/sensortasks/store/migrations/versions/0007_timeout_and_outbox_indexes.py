"""the indexes the timeouts read (tasks sent and not yet acknowledged, tasks running) and the
outbox's two lanes (changes of tasks under way, creations)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 04:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNACKED_SQL = sa.text("status_id = 1 AND sent_at IS NOT NULL")
RUNNING_SQL = sa.text("status_id = 4")
UNPUBLISHED_CHANGE_SQL = sa.text("published = false AND from_status IS NOT NULL")
UNPUBLISHED_CREATION_SQL = sa.text("published = false AND from_status IS NULL")


def upgrade() -> None:
    op.create_index("ix_tasks_unacked", "tasks", ["status_id", "sent_at"], sqlite_where=UNACKED_SQL, postgresql_where=UNACKED_SQL)
    op.create_index(
        "ix_task_events_unpublished_changes",
        "task_events",
        ["id"],
        sqlite_where=UNPUBLISHED_CHANGE_SQL,
        postgresql_where=UNPUBLISHED_CHANGE_SQL,
    )
    op.create_index(
        "ix_task_events_unpublished_creations",
        "task_events",
        ["task_id"],
        sqlite_where=UNPUBLISHED_CREATION_SQL,
        postgresql_where=UNPUBLISHED_CREATION_SQL,
    )
    op.create_index(
        "ix_tasks_running", "tasks", ["status_id", "deadline_at"], sqlite_where=RUNNING_SQL, postgresql_where=RUNNING_SQL
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_running", table_name="tasks")
    op.drop_index("ix_task_events_unpublished_creations", table_name="task_events")
    op.drop_index("ix_task_events_unpublished_changes", table_name="task_events")
    op.drop_index("ix_tasks_unacked", table_name="tasks")
