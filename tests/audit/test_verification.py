"""``guardbot audit verify``: every edit, deletion or forged link in the audit log is named."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Engine, Executable, delete, update

from guardbot.audit.tables import ACTIONS, EVENTS, OUTCOMES
from guardbot.audit.verification import Break, verify_chains

from .conftest import ACCOUNT, OTHER


def tampered(engine: Engine, statement: Executable) -> list[Break]:
    """Change the database behind the log's back, then verify it."""
    with engine.begin() as connection:
        connection.execute(statement)
    return verify_chains(engine).breaks


def event_of(action_id: str, kind: str) -> tuple[object, ...]:
    return (EVENTS.c.action_id == action_id, EVENTS.c.kind == kind)


def test_verify_intact(engine: Engine) -> None:
    result = verify_chains(engine)
    assert result.intact
    assert (result.accounts, result.events) == (2, 19)


def test_verify_names_an_edited_action(engine: Engine, history: dict[str, str]) -> None:
    breaks = tampered(engine, update(ACTIONS).where(ACTIONS.c.id == history["a2"])
                      .values(amount=Decimal(2)))  # fmt: skip
    assert len(breaks) == 1
    broken = breaks[0]
    assert (broken.account_id, broken.action_id, broken.seq) == (ACCOUNT, history["a2"], 5)
    assert "action row was edited" in str(broken)
    assert verify_chains(engine, OTHER).intact


def test_verify_names_an_edited_event(engine: Engine, history: dict[str, str]) -> None:
    (broken,) = tampered(engine, update(EVENTS).where(*event_of(history["a4"], "UNCERTAIN"))
                         .values(latency_ms=30))  # fmt: skip
    assert (broken.account_id, broken.seq) == (OTHER, 3)
    assert "this event was edited" in broken.problem


def test_verify_names_a_deleted_event(engine: Engine, history: dict[str, str]) -> None:
    (broken,) = tampered(engine, delete(EVENTS).where(*event_of(history["a2"], "SENT")))
    assert (broken.account_id, broken.seq) == (ACCOUNT, 7)
    assert "expected seq 6" in broken.problem


def test_verify_names_a_forged_chain_link(engine: Engine, history: dict[str, str]) -> None:
    (broken,) = tampered(engine, update(EVENTS).where(*event_of(history["a3"], "INTENT"))
                         .values(prev_hash="0" * 64))  # fmt: skip
    assert broken.seq == 8
    assert "prev_hash" in broken.problem


def test_verify_names_an_edited_outcome_copy(engine: Engine, history: dict[str, str]) -> None:
    # Doubling a2's amount and calling it applied would inflate the summary's margin added.
    (broken,) = tampered(engine, update(OUTCOMES).where(OUTCOMES.c.action_id == history["a2"])
                         .values(applied=True))  # fmt: skip
    assert (broken.account_id, broken.action_id, broken.seq) == (ACCOUNT, history["a2"], 7)
    assert "action_outcomes row does not match" in broken.problem


def test_verify_names_a_deleted_outcome_copy(engine: Engine, history: dict[str, str]) -> None:
    breaks = tampered(engine, delete(OUTCOMES).where(OUTCOMES.c.action_id == history["a4"]))
    assert [(b.account_id, b.seq) for b in breaks] == [(OTHER, 3)]
    assert "no action_outcomes row" in breaks[0].problem
