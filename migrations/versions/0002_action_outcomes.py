"""action_outcomes: one narrow row per outcome event, for audit summary

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

``audit summary`` joined every outcome event to its action (8 s on 10 million events). The
writer now also inserts, with each outcome event, a row carrying the action fields the
summary groups and sums by, so the summary scans these rows alone. Upgrading fills the table
from the events already recorded; the partial index that served the old join goes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(38, 18).with_variant(sa.String(48), "sqlite")
OUTCOMES = "kind IN ('SUCCEEDED', 'REJECTED', 'UNCERTAIN', 'RECONCILED', 'FAILED')"

# The existing rows, as this revision knows them (not imported from the models).
actions = sa.table(
    "actions",
    *(sa.column(name) for name in ("id", "time", "account_id", "symbol", "policy", "kind")),
    sa.column("amount"),
    sa.column("dry_run"),
)
events = sa.table(
    "action_events",
    *(sa.column(name) for name in ("id", "action_id", "kind", "latency_ms")),
    sa.column("detail", sa.JSON()),
)
COLUMNS = (
    "event_id", "action_id", "action_time", "account_id", "symbol", "policy", "action_kind",
    "amount", "dry_run", "kind", "applied", "latency_ms",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "action_outcomes",
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("action_id", sa.String(32), nullable=False),
        sa.Column("action_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("account_id", sa.String(66), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("policy", sa.String(128), nullable=False),
        sa.Column("action_kind", sa.String(8), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "action_kind IN ('ADD', 'REDUCE')", name=op.f("ck_action_outcomes_action_kind")
        ),
        sa.CheckConstraint(OUTCOMES, name=op.f("ck_action_outcomes_kind")),
        sa.ForeignKeyConstraint(
            ["action_id"], ["actions.id"], name=op.f("fk_action_outcomes_action_id_actions")
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["action_events.id"],
            name=op.f("fk_action_outcomes_event_id_action_events"),
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_action_outcomes")),
    )
    applied = sa.or_(
        events.c.kind == "SUCCEEDED",
        sa.and_(events.c.kind == "RECONCILED", events.c.detail["applied"].as_string() == "true"),
    )
    op.execute(
        sa.insert(sa.table("action_outcomes", *map(sa.column, COLUMNS))).from_select(
            COLUMNS,
            sa.select(
                events.c.id, actions.c.id, actions.c.time, actions.c.account_id,
                actions.c.symbol, actions.c.policy, actions.c.kind, actions.c.amount,
                actions.c.dry_run, events.c.kind, sa.func.coalesce(applied, sa.false()),
                events.c.latency_ms,
            )
            .select_from(events.join(actions, actions.c.id == events.c.action_id))
            .where(events.c.kind.in_(
                ["SUCCEEDED", "REJECTED", "UNCERTAIN", "RECONCILED", "FAILED"])),
        )
    )  # fmt: skip
    # Indexed after the bulk fill: one sorted build instead of millions of insertions.
    op.create_index(
        op.f("ix_action_outcomes_action_time"),
        "action_outcomes",
        ["action_time"],
        postgresql_include=["latency_ms", "kind", "applied", "dry_run", "action_kind", "amount"],
    )
    op.drop_index("ix_action_events_outcomes", table_name="action_events")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ANALYZE action_outcomes")  # plan the first summary on real statistics


def downgrade() -> None:
    op.create_index(
        "ix_action_events_outcomes",
        "action_events",
        ["action_id"],
        postgresql_include=["time", "kind", "latency_ms", "detail"],
        postgresql_where=sa.text(OUTCOMES),
        sqlite_where=sa.text(OUTCOMES),
    )
    op.drop_index(op.f("ix_action_outcomes_action_time"), table_name="action_outcomes")
    op.drop_table("action_outcomes")
