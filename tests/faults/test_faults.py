"""``guardbot run`` against the simulated exchange with faults switched on, both as real
processes; after each run the exchange's ledger is compared with the audit log
(``harness.compare``) and the row goes into the table printed at the end of the session.

The marks are driven down step by step through the admin API (``POST /sim/marks``), so
every position keeps drifting toward liquidation and the guard keeps topping up: many
actions in a few seconds, the same on every run. The top-up band is narrow (trigger 8 %,
target 9 % of the mark) so nearly every 1 % step triggers one.
"""

from __future__ import annotations

import contextlib
import random
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    REPORT,
    Audited,
    Daemon,
    FaultRow,
    Proxy,
    Sim,
    audit_actions,
    compare,
    guardbot,
    leak_sources,
    migrate,
    scan_for_secrets,
    write_config,
)
from .pgcluster import PgCluster

pytestmark = pytest.mark.slow

SYMBOLS = ("PERP_ETH_USDC", "PERP_BTC_USDC")
STEP = Decimal("0.99")


def drive_down(sim: Sim, steps: int, every_s: float = 0.4, factor: Decimal = STEP) -> None:
    """Multiply every symbol's mark by ``factor`` (1 % down) per step."""
    for _ in range(steps):
        for symbol in SYMBOLS:
            sim.pin(symbol, (sim.mark(symbol) * factor).quantize(Decimal("0.1")))
        time.sleep(every_s)


def settle(audit_url: str, daemon: Daemon, timeout_s: float = 40,
           sim: Sim | None = None) -> list[Audited]:  # fmt: skip
    """Wait (faults off) until the audit spool is empty and every action in the database has
    an outcome (and, given ``sim``, the database holds as many actions as the exchange
    applied changes: after an outage the spool is replayed on the store's retry backoff,
    capped at audit.store.MAX_RETRY_S, and a spool read as empty in between proves nothing);
    return the actions. A record really lost still fails the run, after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        actions = audit_actions(audit_url)
        settled = daemon.metric("guardbot_audit_spool_depth") == 0 and all(
            a.applied is not None for a in actions
        ) and (sim is None or len(actions) >= len(sim.state()["margin_changes"]))
        if settled or time.monotonic() > deadline:
            return actions
        assert daemon.alive(), daemon.log_text()[-3000:]
        time.sleep(0.3)


def drive_until_in_flight(sim: Sim, audit_url: str, max_steps: int = 20) -> set[str]:
    """Step the marks down (0.5 %) until some action has been sent and has no outcome yet;
    returns the ids of those in flight."""
    for _ in range(max_steps):
        drive_down(sim, steps=1, every_s=0, factor=Decimal("0.995"))
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline:
            actions = audit_actions(audit_url)
            in_flight = {a.id for a in actions if a.events[-1:] in (("SENT",), ("UNCERTAIN",))}
            if in_flight:
                return in_flight
            time.sleep(0.02)
    raise AssertionError("no action was ever in flight")


def record(row: FaultRow) -> FaultRow:
    REPORT.append(row)
    return row


def assert_clean(row: FaultRow, min_actions: int) -> None:
    assert row.attempted >= min_actions, f"too little activity to prove anything: {row}"
    assert row.duplicates == 0, row
    assert row.lost == 0, row
    assert row.applied == row.recorded, row
    assert not row.notes, row.notes


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
    assert_clean(row, min_actions=20)
    assert scan_for_secrets(sim.secrets(), leak_sources(tmp_path, daemon, audit_url)) == []
    # The scan does find a secret where one is: in the config file.
    assert scan_for_secrets(sim.secrets(), {"config": config.read_text()}) == ["config"]


def distances(state: dict[str, Any]) -> list[Decimal]:
    """Every open isolated position's distance to liquidation, as a fraction of the mark."""
    found = []
    for account in state["accounts"]:
        for p in account["positions"]:
            if p["margin_mode"] == "ISOLATED" and Decimal(p["qty"]) and p["liquidation_price"]:
                mark = Decimal(p["mark_price"])
                found.append((mark - Decimal(p["liquidation_price"])) / mark)
    return found


def wait_all_safe(sim: Sim, trigger: Decimal = Decimal("0.08"), timeout_s: float = 15) -> None:
    """With faults off, the guard must bring every position back out of the trigger band."""
    deadline = time.monotonic() + timeout_s
    while min(distances(sim.state()), default=Decimal(-1)) < trigger:
        assert time.monotonic() < deadline, f"positions left at risk: {distances(sim.state())}"
        time.sleep(0.3)


def test_429_storms_and_5xx_bursts_back_off_and_still_protect(
    tmp_path: Path, audit_url: str
) -> None:
    with Sim(tmp_path, accounts=2, symbols=",".join(SYMBOLS)) as sim:
        config = write_config(tmp_path, sim, audit_url)
        with Daemon(config, tmp_path) as daemon:
            daemon.wait_ready()
            # A storm is survivable only if the guard keeps retrying; the marks fall slowly
            # enough (0.6 %/s, about 13 s from trigger to liquidation) that 13 refusals in a
            # row would be needed to lose a position.
            slow = Decimal("0.997")
            sim.faults(rate_limit_rate=0.5)
            drive_down(sim, steps=12, every_s=0.5, factor=slow)
            sim.faults(rate_limit_rate=0, error_rate=0.3)
            drive_down(sim, steps=12, every_s=0.5, factor=slow)
            sim.no_faults()
            drive_down(sim, steps=6)
            wait_all_safe(sim)
            actions = settle(audit_url, daemon)
        state = sim.state()
    row = record(compare("429 storm + 5xx burst", state, actions, daemon.worst_age_s))
    counters = state["counters"]
    assert counters.get("fault_429", 0) > 5 and counters.get("fault_5xx", 0) > 5, counters
    # Backed off: the exchange's own limiter never had to refuse the guard.
    assert counters.get("rate_limited", 0) == 0, counters
    assert state["liquidations"] == []
    assert_clean(row, min_actions=20)


def test_dropped_websockets_keep_data_fresh_through_polling(tmp_path: Path, audit_url: str) -> None:
    with Sim(tmp_path, accounts=2, symbols=",".join(SYMBOLS)) as sim:
        config = write_config(tmp_path, sim, audit_url, max_age_s=5.0)
        with Daemon(config, tmp_path) as daemon:
            daemon.wait_ready()
            sim.faults(ws_drop_every_s=2)
            drive_down(sim, steps=20)
            sim.no_faults()
            wait_all_safe(sim)
            actions = settle(audit_url, daemon)
        state = sim.state()
    row = record(compare("WS dropped every 2 s", state, actions, daemon.worst_age_s))
    assert state["counters"].get("fault_ws_drop", 0) >= 4
    assert row.worst_age_s is not None and row.worst_age_s <= 5.0
    assert state["liquidations"] == []
    assert_clean(row, min_actions=20)


def test_silent_websockets_keep_data_fresh_through_polling(tmp_path: Path, audit_url: str) -> None:
    with Sim(tmp_path, accounts=2, symbols=",".join(SYMBOLS)) as sim:
        sim_port = int(sim.rest_url.rsplit(":", 1)[1])
        with Proxy(sim_port) as proxy:
            config = write_config(tmp_path, sim, audit_url, max_age_s=5.0, ws_port=proxy.port)
            with Daemon(config, tmp_path) as daemon:
                daemon.wait_ready()
                proxy.silent.set()
                drive_down(sim, steps=20)
                proxy.silent.clear()
                wait_all_safe(sim)
                actions = settle(audit_url, daemon)
            state = sim.state()
    row = record(compare("silent WS", state, actions, daemon.worst_age_s))
    assert row.worst_age_s is not None and row.worst_age_s <= 5.0
    assert state["liquidations"] == []
    assert_clean(row, min_actions=20)


def test_audit_database_down_30s_loses_no_record_and_keeps_order(tmp_path: Path) -> None:
    """The audit database (a PostgreSQL cluster of our own) is stopped for 30 s while the
    guard is busy: records wait in the spool and arrive, complete and in order."""
    with PgCluster() as pg:
        migrate(pg.url)
        with Sim(tmp_path, accounts=2, symbols=",".join(SYMBOLS)) as sim:
            config = write_config(tmp_path, sim, pg.url)
            with Daemon(config, tmp_path) as daemon:
                daemon.wait_ready()
                drive_down(sim, steps=4)
                pg.stop()
                down_ms = time.time() * 1000
                drive_down(sim, steps=30, every_s=1.0)
                up_ms = time.time() * 1000
                pg.start()
                drive_down(sim, steps=4)
                actions = settle(pg.url, daemon, timeout_s=30, sim=sim)
            state = sim.state()
        verify = guardbot("audit", "verify", "--db", pg.url)
        sources = leak_sources(tmp_path, daemon, pg.url)
    row = record(compare("audit DB down 30 s", state, actions, daemon.worst_age_s))
    during = [c for c in state["margin_changes"] if down_ms < c["time_ms"] < up_ms]
    assert len(during) >= 10, "the guard stopped acting while the audit database was down"
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for action in actions:
        assert action.events[0] == "INTENT", action
    assert state["liquidations"] == []
    assert_clean(row, min_actions=20)
    assert scan_for_secrets(sim.secrets(), sources) == []


def test_sigkill_at_random_points_then_restart(tmp_path: Path, audit_url: str) -> None:
    """Killed (SIGKILL) four times at random moments while responses are being lost: no
    action applied twice, every unfinished action reconciled at start-up, and the daily
    budget, derived from the audit log, still binds across the restarts."""
    rng = random.Random(20261122)
    budget = Decimal(1500)
    interrupted: set[str] = set()
    with Sim(tmp_path, accounts=2, symbols=",".join(SYMBOLS)) as sim:
        config = write_config(tmp_path, sim, audit_url, per_account_per_day=str(budget))
        with Daemon(config, tmp_path) as daemon:
            daemon.wait_ready()
            for kill in range(4):
                # Slow answers keep calls in flight; half the kills wait for one.
                sim.faults(lost_response_rate=0.3, latency_ms=400)
                if kill % 2:
                    interrupted |= drive_until_in_flight(sim, audit_url)
                else:
                    drive_down(sim, steps=rng.randint(2, 5), every_s=0.5, factor=Decimal("0.995"))
                    time.sleep(rng.uniform(0, 0.4))
                daemon.kill()
                # The restart happens with the faults off, so each restart is quick (start-up
                # retries transient failures for up to daemon.STARTUP_PATIENCE_S).
                sim.no_faults()
                daemon.start()
                daemon.wait_ready()
                # The restarted guard settles what the killed one left unfinished.
                settle(audit_url, daemon)
            killing_ended_ms = time.time() * 1000
            # Then more demand than the daily budget allows.
            drive_down(sim, steps=12)
            actions = settle(audit_url, daemon)
        state = sim.state()
    row = record(compare("SIGKILL x4 + restart", state, actions, daemon.worst_age_s))
    # Every action a kill interrupted got its outcome from a later run.
    finished = {a.id for a in actions if a.applied is not None}
    assert interrupted and interrupted <= finished, interrupted - finished
    # No position was lost while the guard was being killed (only once the budget ran out),
    # so every outcome could be read from its position.
    assert all(liq["time_ms"] > killing_ended_ms for liq in state["liquidations"])
    added: dict[str, Decimal] = {}
    for change in state["margin_changes"]:
        if change["kind"] == "ADD":
            added[change["account_id"]] = added.get(change["account_id"], 0) + Decimal(
                change["amount"]
            )
    assert all(total <= budget for total in added.values()), added
    assert max(added.values()) > budget / 2, f"the budget was never approached: {added}"
    assert_clean(row, min_actions=15)


def partition(daemons: list[Daemon], names: set[str]) -> bool:
    """Every account guarded by exactly one of ``daemons``."""
    owned = [d.owned() for d in daemons]
    return set().union(*owned) == names and sum(map(len, owned)) == len(names)


def test_three_daemons_share_the_accounts_and_take_over_from_a_killed_one(
    tmp_path: Path,
) -> None:
    """Scale-out on PostgreSQL: three ``guardbot run`` on the same six accounts divide them;
    one is SIGKILLed mid-activity and the two others take its accounts over; restarted, it
    gets a share back."""
    with PgCluster() as pg:
        migrate(pg.url)
        with Sim(tmp_path, accounts=6, symbols="PERP_ETH_USDC") as sim:
            names = {f"acct{i}" for i in range(6)}
            daemons = []
            for i in range(3):
                home = tmp_path / f"daemon{i}"
                home.mkdir()
                daemons.append(Daemon(write_config(home, sim, pg.url), home))
            with contextlib.ExitStack() as stopping:
                for daemon in daemons:
                    # Every daemon is stopped at the end, even if stopping another fails.
                    stopping.callback(daemon.__exit__)
                    daemon.start()
                deadline = time.monotonic() + 30
                while not (partition(daemons, names) and all(d.owned() for d in daemons)):
                    assert time.monotonic() < deadline, [d.owned() for d in daemons]
                    time.sleep(0.2)
                drive_down(sim, steps=5)
                victim = max(daemons, key=lambda d: len(d.owned()))
                survivors = [d for d in daemons if d is not victim]
                victim.kill()
                killed = time.monotonic()
                # The marks keep falling (0.5 % every 0.5 s) while nobody guards the orphans.
                while not partition(survivors, names):
                    assert time.monotonic() - killed < 15, [d.owned() for d in survivors]
                    drive_down(sim, steps=1, every_s=0.5, factor=Decimal("0.995"))
                failover_s = time.monotonic() - killed
                drive_down(sim, steps=5)
                # It comes back: the others hand it a share while the marks keep falling.
                victim.start()
                deadline = time.monotonic() + 20
                while not (partition(daemons, names) and victim.owned()):
                    assert time.monotonic() < deadline, [d.owned() for d in daemons]
                    drive_down(sim, steps=1, every_s=0.5, factor=Decimal("0.995"))
                drive_down(sim, steps=5)
                wait_all_safe(sim)
                actions = [settle(pg.url, daemon) for daemon in daemons][-1]
            state = sim.state()
    row = record(
        compare(
            f"3 daemons: 1 killed, rejoins (failover {failover_s:.1f} s)",
            state,
            actions,
            max((d.worst_age_s for d in daemons if d.worst_age_s is not None), default=None),
        )
    )
    assert failover_s < 10
    assert state["liquidations"] == []
    assert_clean(row, min_actions=20)
