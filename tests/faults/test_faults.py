"""``guardbot run`` against the simulated exchange with faults switched on, both as real
processes; after each run the exchange's ledger is compared with the audit log
(``harness.compare``) and the row goes into the table printed at the end of the session.

The marks are driven down step by step through the admin API (``POST /sim/marks``), so
every position keeps drifting toward liquidation and the guard keeps topping up: many
actions in a few seconds, the same on every run. The top-up band is narrow (trigger 8 %,
target 9 % of the mark) so nearly every 1 % step triggers one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from .harness import (
    REPORT,
    Audited,
    Daemon,
    FaultRow,
    Sim,
    audit_actions,
    audit_dump,
    compare,
    migrate,
    scan_for_secrets,
    write_config,
)

pytestmark = pytest.mark.slow

SYMBOLS = ("PERP_ETH_USDC", "PERP_BTC_USDC")
STEP = Decimal("0.99")


def drive_down(sim: Sim, steps: int, every_s: float = 0.4,
               during: Callable[[int], None] | None = None) -> None:  # fmt: skip
    """Lower every symbol's mark 1 % per step; ``during(step)`` runs after each step."""
    for step in range(steps):
        for symbol in SYMBOLS:
            sim.pin(symbol, (sim.mark(symbol) * STEP).quantize(Decimal("0.1")))
        if during is not None:
            during(step)
        time.sleep(every_s)


def settle(audit_url: str, daemon: Daemon, timeout_s: float = 20) -> list[Audited]:
    """Wait (faults off) until every action has an outcome; return the actions."""
    deadline = time.monotonic() + timeout_s
    while True:
        actions = audit_actions(audit_url)
        if all(a.applied is not None for a in actions) or time.monotonic() > deadline:
            return actions
        assert daemon.alive(), daemon.log_text()[-3000:]
        time.sleep(0.3)


def record(row: FaultRow) -> FaultRow:
    REPORT.append(row)
    return row


def assert_clean(row: FaultRow, min_actions: int) -> None:
    assert row.attempted >= min_actions, f"too little activity to prove anything: {row}"
    assert row.duplicates == 0, row
    assert row.lost == 0, row
    assert row.applied == row.recorded, row
    assert not row.notes, row.notes


@pytest.fixture
def audit_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    migrate(url)
    return url


def test_lost_responses_are_reconciled_never_applied_twice(tmp_path: Path, audit_url: str) -> None:
    """30 % of responses are lost after the exchange applied the change."""
    with Sim(tmp_path, accounts=2, symbols=",".join(SYMBOLS)) as sim:
        config = write_config(tmp_path, sim, audit_url)
        with Daemon(config, tmp_path) as daemon:
            daemon.wait_ready()
            sim.faults(lost_response_rate=0.3)
            drive_down(sim, steps=25)
            sim.no_faults()
            actions = settle(audit_url, daemon)
        state = sim.state()
    row = record(compare("lost responses 30%", state, actions, daemon.worst_age_s))
    assert state["counters"].get("fault_lost_response", 0) > 10
    assert sum("UNCERTAIN" in a.events for a in actions) > 0, "no outcome was ever uncertain"
    assert state["liquidations"] == []
    assert_clean(row, min_actions=40)
    leaked = scan_for_secrets(sim.secrets(), {"daemon log": daemon.log_text(),
                                              "audit database": audit_dump(audit_url)})  # fmt: skip
    assert leaked == []
