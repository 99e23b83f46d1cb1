"""listing indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 11:44:04.883664
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index('ix_tasks_customer_created', ['customer_id', 'created_at'], unique=False)
        batch_op.create_index('ix_tasks_customer_updated', ['customer_id', 'updated_at'], unique=False)
        batch_op.create_index('ix_tasks_sensor_status_id', ['sensor_serial', 'status_id', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_tasks_sensor_status_id')
        batch_op.drop_index('ix_tasks_customer_updated')
        batch_op.drop_index('ix_tasks_customer_created')

