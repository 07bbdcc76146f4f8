"""audit schema: runs, actions, action events, observations

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Types are spelled out here (not imported from guardbot.audit.tables) so this migration keeps
building the same schema whatever the models become later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# guardbot.audit.tables.Money: exact NUMERIC, or its decimal string on SQLite.
MONEY = sa.Numeric(38, 18).with_variant(sa.String(48), "sqlite")
TIME = sa.DateTime(timezone=True)
ID = sa.String(32)
EVENT_KINDS = (
    "'INTENT', 'SENT', 'SUCCEEDED', 'REJECTED', 'UNCERTAIN', 'RECONCILED', 'VERIFIED', "
    "'SKIPPED', 'FAILED', 'DRY_RUN'"
)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", ID, nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("config_hash", sa.String(128), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_table(
        "run_ends",
        sa.Column("run_id", ID, nullable=False),
        sa.Column("ended_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_ends_run_id_runs")),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_run_ends")),
    )
    op.create_table(
        "actions",
        sa.Column("id", ID, nullable=False),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("account_id", sa.String(66), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("margin_mode", sa.String(8), nullable=False),
        sa.Column("policy", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("mark_price", MONEY, nullable=False),
        sa.Column("margin", MONEY, nullable=False),
        sa.Column("qty", MONEY, nullable=False),
        sa.Column("liquidation_price", MONEY, nullable=True),
        sa.Column("distance", MONEY, nullable=True),
        sa.Column("data_age_ms", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.CheckConstraint("kind IN ('ADD', 'REDUCE')", name=op.f("ck_actions_kind")),
        sa.CheckConstraint(
            "margin_mode IN ('ISOLATED', 'CROSS')", name=op.f("ck_actions_margin_mode")
        ),
        sa.CheckConstraint("source IN ('REST', 'WS', 'MARK')", name=op.f("ck_actions_source")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_actions_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_actions")),
    )
    op.create_index(op.f("ix_actions_account_id_time"), "actions", ["account_id", "time"])
    op.create_index(
        op.f("ix_actions_account_id_symbol_time"), "actions", ["account_id", "symbol", "time"]
    )
    op.create_index(op.f("ix_actions_time"), "actions", ["time"])
    op.create_table(
        "action_events",
        sa.Column("id", ID, nullable=False),
        sa.Column("action_id", ID, nullable=False),
        sa.Column("account_id", sa.String(66), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("code", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.CheckConstraint(f"kind IN ({EVENT_KINDS})", name=op.f("ck_action_events_kind")),
        sa.ForeignKeyConstraint(
            ["action_id"], ["actions.id"], name=op.f("fk_action_events_action_id_actions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_action_events")),
        sa.UniqueConstraint(
            "account_id", "seq", name=op.f("uq_action_events_account_id_seq")
        ),
    )
    op.create_index(
        op.f("ix_action_events_action_id_seq"), "action_events", ["action_id", "seq"]
    )
    # audit summary reads only outcome events, from this index alone (PostgreSQL).
    outcomes = "kind IN ('SUCCEEDED', 'REJECTED', 'UNCERTAIN', 'RECONCILED', 'FAILED')"
    op.create_index(
        "ix_action_events_outcomes",
        "action_events",
        ["action_id"],
        postgresql_include=["time", "kind", "latency_ms", "detail"],
        postgresql_where=sa.text(outcomes),
        sqlite_where=sa.text(outcomes),
    )
    op.create_table(
        "observations",
        sa.Column("id", ID, nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("account_id", sa.String(66), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_observations")),
    )
    op.create_index(
        op.f("ix_observations_account_id_time"), "observations", ["account_id", "time"]
    )


def downgrade() -> None:
    op.drop_table("observations")
    op.drop_table("action_events")
    op.drop_table("actions")
    op.drop_table("run_ends")
    op.drop_table("runs")
