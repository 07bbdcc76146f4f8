"""operator_commands: who commanded the daemon what (Telegram /pause...), and the result

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

One row per command an operator gives the running daemon over a chat channel: the chat and
sender, the command and its arguments, the result and what was answered. Rows are only
inserted, like every other audit row.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESULTS = "result IN ('done', 'unchanged', 'answered', 'stale', 'failed')"


def upgrade() -> None:
    op.create_table(
        "operator_commands",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(64), nullable=False),
        sa.Column("sender", sa.String(255), nullable=True),
        sa.Column("command", sa.String(64), nullable=False),
        sa.Column("arguments", sa.Text(), nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.CheckConstraint(RESULTS, name=op.f("ck_operator_commands_result")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_operator_commands_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_commands")),
    )
    op.create_index(op.f("ix_operator_commands_time"), "operator_commands", ["time"])


def downgrade() -> None:
    op.drop_index(op.f("ix_operator_commands_time"), table_name="operator_commands")
    op.drop_table("operator_commands")
