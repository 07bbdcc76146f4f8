"""The whole guard end to end: ``run_daemon`` against ``guardbot sim`` over loopback, audit
log in a real database. The simulator is paused: marks move one simulated second at a time
(its scenarios, ``SimServer.advance``) or to exact prices (its admin API), and the tests wait
for the guard between moves, so outcomes do not depend on CPU speed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from e2e.helpers import ETH, AuditReader, eventually, guard_settings, guarding, pin_mark
from guardbot import cli
from guardbot.audit import queries
from guardbot.audit.store import SETTLED, ActionRecord, AuditLog, EventKind
from guardbot.domain import ActionKind, MarginMode, Source
from guardbot.exchange.client import OrderlyExchange
from guardbot.sim.admin import SimAccount, open_account
from guardbot.sim.records import Liquidation
from guardbot.sim.reports import PositionRow
from guardbot.sim.server import SimServer

# An isolated long at 10x (liquidated by a ~9 % fall) and a cross long on the same symbol.
BOOK = [(ETH, "ISOLATED", "1", 10), (ETH, "CROSS", "1", 10)]


def isolated(sim: SimServer, account_id: str, mode: str = "ISOLATED") -> PositionRow | None:
    account = sim.engine.account(account_id)
    for view in sim.engine.positions(account):
        if view.symbol == ETH and view.margin_mode == mode and view.qty != 0:
            return view
    return None


def liquidated(sim: SimServer, account_id: str) -> list[Liquidation]:
    return [liq for liq in sim.engine.liquidations if liq.account_id == account_id]


def at_a_safe_distance(sim: SimServer, account_id: str) -> bool:
    """The guarded isolated position is back beyond most of topup's 5 % trigger (or gone,
    which the test's assertions then report). The margin below the trigger absorbs the
    guard's and the simulator's liquidation prices differing in the last digits."""
    view = isolated(sim, account_id)
    if view is None or view.est_liq_price is None:
        return True
    mark = view.mark_price
    return (mark - view.est_liq_price) / mark >= Decimal("0.045")


def settled(audit: AuditReader) -> bool:
    """Every audited action has an outcome (nothing in flight or unreconciled)."""
    done = {e.action_id for e in audit.events() if e.kind in SETTLED}
    return all(a.id in done for a in audit.actions())


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_crash_guarded_survives_twin_is_liquidated_cross_untouched(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path,
    reader_for: Callable[[str], AuditReader],
) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    audit = reader_for(url)
    # The crash scenario (calm for 60 simulated seconds, then -30 % over 120) on a paused
    # simulator, one simulated second at a time: after each, the guard gets all the (real)
    # time it needs to bring the position back out of danger before the price moves on.
    # The outcome then depends on the guard's decisions, not on how fast this CPU is.
    async with SimServer(seed=7, scenario="crash", speed=0) as sim:
        guarded = await open_account(sim.rest_url, "20000", BOOK)
        twin = await open_account(sim.rest_url, "20000", BOOK)
        cross_before = isolated(sim, guarded.account_id, "CROSS")
        margin_before = isolated(sim, guarded.account_id).margin  # type: ignore[union-attr]
        settings = guard_settings(sim, guarded, url, tmp_path / "spool")
        # PostgreSQL shares accounts between instances: a lone one takes an account after
        # five ownership ticks (the first steps below wait for it if the crash comes first).
        async with guarding(settings, ownership_interval_s=0.2):
            await eventually(lambda: sim.counters["ws_private_connections"] > 0)
            for _ in range(180):
                sim.advance(1)
                await asyncio.sleep(0)  # the guard sees every mark, not a burst
                await eventually(lambda: at_a_safe_distance(sim, guarded.account_id),
                                 timeout_s=30)
            await eventually(lambda: settled(audit) and bool(audit.events("VERIFIED")),
                             timeout_s=30)
        survivor = isolated(sim, guarded.account_id)
        assert survivor is not None, "the guarded position survived"
        assert sim.engine.marks[ETH] < Decimal(2150), "the crash ran its course"
        assert liquidated(sim, guarded.account_id) == []
        assert [liq.margin_mode for liq in liquidated(sim, twin.account_id)] == ["ISOLATED"]
        cross_after = isolated(sim, guarded.account_id, "CROSS")
        assert cross_after is not None and cross_before is not None
        assert (cross_after.qty, cross_after.cost_position, cross_after.margin) == (
            cross_before.qty, cross_before.cost_position, cross_before.margin)

    actions = audit.actions()
    assert actions, "top-ups were audited"
    assert {a.margin_mode for a in actions} == {"ISOLATED"}, "the cross position is never touched"
    assert {a.kind for a in actions} == {"ADD"}
    # the position holds exactly the margin it started with plus every audited top-up
    added = audit.applied("ADD")
    assert added > 0
    assert survivor.margin - margin_before == added
    assert audit.events("VERIFIED"), "effects were verified on later snapshots"


# With the simulator's clock stopped (speed 0), marks move only when a test pins them. The
# isolated ETH long above starts with 301.80 margin and is liquidated at about 2714.5; at
# 2850 it is 4.8 % away, inside topup's 5 % trigger.
BELOW_TRIGGER = "2850"


def margin_of(sim: SimServer, account_id: str) -> Decimal:
    view = isolated(sim, account_id)
    assert view is not None
    return view.margin


class CountingExchange(OrderlyExchange):
    """The real client, counting position_margin calls (to prove that none were made)."""

    margin_calls = 0

    async def adjust_margin(self, symbol: str, kind: ActionKind, amount: Decimal) -> None:
        CountingExchange.margin_calls += 1
        await super().adjust_margin(symbol, kind, amount)


async def test_rally_sweeps_the_excess_and_the_holding_grows_by_the_audited_amount(
    sqlite_url: str, tmp_path: Path, reader_for: Callable[[str], AuditReader],
) -> None:
    async with SimServer(seed=7, scenario="calm", speed=0) as sim:
        account = await open_account(sim.rest_url, "20000", BOOK)
        # The owner parks 600 USDC of extra margin on the position: more than it needs.
        settings = guard_settings(
            sim, account, sqlite_url, tmp_path / "spool",
            policies=[{"use": "topup"}, {"use": "sweep", "params": {"safe": "0.20"}}])
        async with OrderlyExchange.from_settings(settings.accounts[0], settings.exchange) as ex:
            await ex.adjust_margin(ETH, ActionKind.ADD, Decimal(600))
        holding_before = sim.engine.account(account.account_id).holding
        margin_before = margin_of(sim, account.account_id)
        async with guarding(settings):
            await pin_mark(sim, ETH, "3300")  # the rally
            await eventually(lambda: margin_of(sim, account.account_id) < margin_before)
            await eventually(lambda: not sim.engine.changes.positions, timeout_s=2)
        holding_after = sim.engine.account(account.account_id).holding
        margin_after = margin_of(sim, account.account_id)
    audit = reader_for(sqlite_url)
    swept = audit.applied("REDUCE")
    assert swept > 0
    assert audit.applied("ADD") == 0
    assert holding_after - holding_before == swept
    assert margin_before - margin_after == swept
    assert {a.kind for a in audit.actions()} == {"REDUCE"}


async def test_an_exhausted_budget_stops_top_ups_with_an_audited_refusal(
    sqlite_url: str, tmp_path: Path, reader_for: Callable[[str], AuditReader],
) -> None:
    async with SimServer(seed=7, scenario="calm", speed=0) as sim:
        account = await open_account(sim.rest_url, "20000", BOOK)
        settings = guard_settings(
            sim, account, sqlite_url, tmp_path / "spool",
            budgets={"cooldown_s": 0, "per_position_per_day": "100"})
        margin_before = margin_of(sim, account.account_id)
        async with guarding(settings):
            await pin_mark(sim, ETH, BELOW_TRIGGER)
            await eventually(lambda: margin_of(sim, account.account_id) > margin_before)
            await pin_mark(sim, ETH, "2700")  # at risk again, nothing left in the budget
            audit = reader_for(sqlite_url)
            await eventually(lambda: bool(audit.events("SKIPPED")))
        margin_after = margin_of(sim, account.account_id)
    added = audit.applied("ADD")
    assert added == Decimal(100), "the first top-up was clipped to the position's budget"
    assert margin_after - margin_before == added
    refusal = audit.events("SKIPPED")[0]
    assert "budget" in refusal.message
    assert len(audit.events("SENT")) == 1


async def test_dry_run_audits_decisions_and_makes_no_calls(
    sqlite_url: str, tmp_path: Path, reader_for: Callable[[str], AuditReader],
) -> None:
    CountingExchange.margin_calls = 0
    async with SimServer(seed=7, scenario="calm", speed=0) as sim:
        account = await open_account(sim.rest_url, "20000", BOOK)
        settings = guard_settings(sim, account, sqlite_url, tmp_path / "spool",
                                  guard={"dry_run": True})
        margin_before = margin_of(sim, account.account_id)
        audit = reader_for(sqlite_url)
        async with guarding(settings, exchange_factory=CountingExchange.from_settings):
            await pin_mark(sim, ETH, BELOW_TRIGGER)
            await eventually(lambda: bool(audit.events("DRY_RUN")))
        assert margin_of(sim, account.account_id) == margin_before
    assert CountingExchange.margin_calls == 0
    assert audit.events("SENT") == []
    assert all(a.dry_run for a in audit.actions())


async def test_dry_run_models_what_it_would_have_sent_and_does_not_repeat_it(
    sqlite_url: str, tmp_path: Path, reader_for: Callable[[str], AuditReader],
) -> None:
    """A dry-run top-up's effect is applied to the shadow of the position: the same ADD is
    not decided again every cooldown (it was before), a further fall below the trigger as
    live would see it decides the next one, and ``audit summary`` shows both as what the
    dry run would have added, apart from what was really moved (nothing)."""
    CountingExchange.margin_calls = 0
    async with SimServer(seed=7, scenario="calm", speed=0) as sim:
        account = await open_account(sim.rest_url, "20000", BOOK)
        # target 7 %: after the first top-up (at 2850) the shadow's liquidation is near
        # 2650, so at 2780 the shadow is below the trigger again while the real position,
        # liquidated near 2714.5, still lives.
        settings = guard_settings(sim, account, sqlite_url, tmp_path / "spool",
                                  guard={"dry_run": True},
                                  policies=[{"use": "topup",
                                             "params": {"trigger": "0.05", "target": "0.07"}}])
        audit = reader_for(sqlite_url)
        margin_before = margin_of(sim, account.account_id)
        async with guarding(settings, exchange_factory=CountingExchange.from_settings):
            await pin_mark(sim, ETH, BELOW_TRIGGER)
            await eventually(lambda: bool(audit.events("DRY_RUN")))
            # Many cooldowns (0.2 s) and polls (0.5-1 s) later, nothing more was decided.
            await asyncio.sleep(3)
            first = audit.events("DRY_RUN")
            assert len(first) == 1, "the shadow shows the top-up: not decided again"
            await pin_mark(sim, ETH, "2780")
            await eventually(lambda: len(audit.events("DRY_RUN")) == 2)
            await asyncio.sleep(1)
        assert margin_of(sim, account.account_id) == margin_before
    assert CountingExchange.margin_calls == 0
    dry = audit.events("DRY_RUN")
    assert len(dry) == 2 and {e.action_kind for e in dry} == {"ADD"}
    [row] = queries.summarize(audit.engine)
    assert (row.added, row.reduced) == (Decimal(0), Decimal(0))
    assert row.dry_run_added == sum(e.amount for e in dry) > 0
    assert row.dry_run_reduced == 0


async def test_a_raising_plugin_is_audited_and_the_others_go_on(
    sqlite_url: str, tmp_path: Path, reader_for: Callable[[str], AuditReader],
) -> None:
    strategies = tmp_path / "strategies"
    strategies.mkdir()
    (strategies / "boom.py").write_text(
        "class Boom:\n"
        "    name = 'boom'\n"
        "    def evaluate(self, view, ctx):\n"
        "        raise RuntimeError('boom goes the plugin')\n"
        "POLICY = Boom\n"
    )
    async with SimServer(seed=7, scenario="calm", speed=0) as sim:
        account = await open_account(sim.rest_url, "20000", BOOK)
        settings = guard_settings(
            sim, account, sqlite_url, tmp_path / "spool",
            guard={"strategies_dir": str(strategies)},
            policies=[{"use": "file:boom"}, {"use": "topup"}])
        margin_before = margin_of(sim, account.account_id)
        async with guarding(settings):
            await pin_mark(sim, ETH, BELOW_TRIGGER)
            await eventually(lambda: margin_of(sim, account.account_id) > margin_before)
    audit = reader_for(sqlite_url)
    failures = audit.observations("policy_failed")
    assert failures and failures[0].detail["policy"] == "file:boom"
    assert "boom goes the plugin" in failures[0].detail["error"]
    assert audit.applied("ADD") > 0


async def test_a_restart_keeps_the_budget_and_reconciles_the_unfinished(
    sqlite_url: str, tmp_path: Path, reader_for: Callable[[str], AuditReader],
) -> None:
    budgets = {"cooldown_s": 0, "per_position_per_day": "200", "per_account_per_day": "200"}
    async with SimServer(seed=7, scenario="calm", speed=0) as sim:
        account = await open_account(sim.rest_url, "20000", BOOK)
        settings = guard_settings(sim, account, sqlite_url, tmp_path / "spool",
                                  budgets=budgets)
        margin_start = margin_of(sim, account.account_id)
        async with guarding(settings):
            await pin_mark(sim, ETH, BELOW_TRIGGER)
            await eventually(lambda: margin_of(sim, account.account_id) > margin_start)
        first_run = margin_of(sim, account.account_id) - margin_start
        assert 0 < first_run < 200

        # A run dies between sending a 30 USDC top-up and recording its outcome: the
        # exchange applied it, the audit log only knows it was sent.
        lost_id = await crash_mid_call(sim, account, settings.exchange, sqlite_url,
                                       tmp_path / "spool", Decimal(30))

        async with guarding(settings):
            audit = reader_for(sqlite_url)
            # Settled by a read a full read timeout (exchange.timeout_s + 1 s) after the
            # take-over: the dead run's call may still have been landing.
            await eventually(lambda: bool(audit.events("RECONCILED")), timeout_s=25)
            await pin_mark(sim, ETH, "2600")  # 480.39 margin: liquidated near 2535
            await eventually(lambda: bool(audit.events("SKIPPED")))
        margin_end = margin_of(sim, account.account_id)
    reconciled = audit.events("RECONCILED")
    assert [(e.action_id, e.detail["applied"]) for e in reconciled] == [(lost_id, "true")]
    added = audit.applied("ADD")
    assert added == margin_end - margin_start
    assert added == Decimal(200), "the day's budget was spent exactly once across restarts"
    assert "budget" in audit.events("SKIPPED")[-1].message


async def crash_mid_call(
    sim: SimServer, account: SimAccount, exchange_settings: object, url: str, spool: Path,
    amount: Decimal,
) -> str:
    """Leave the audit log as a run killed mid-call would: intent and SENT, no outcome."""
    view = isolated(sim, account.account_id)
    assert view is not None
    audit = await AuditLog.open(url, spool)
    try:
        await audit.start_run("test", "crashed-run", "host")
        action_id = await audit.record_action(ActionRecord(
            account_id=account.account_id, symbol=ETH, margin_mode=MarginMode.ISOLATED,
            policy="topup", kind=ActionKind.ADD, amount=amount, reason="test", dry_run=False,
            mark_price=view.mark_price, margin=view.margin, qty=view.qty,
            data_age_ms=0, source=Source.REST))
        await audit.record_event(action_id, account.account_id, EventKind.SENT)
    finally:
        await audit.aclose()
    sim.engine.adjust_margin(account.account_id, ETH, "ADD", str(amount))
    sim.flush()
    return action_id


async def test_an_uncertain_call_does_not_hold_back_the_rescue(
    sqlite_url: str, tmp_path: Path, reader_for: Callable[[str], AuditReader],
) -> None:
    """A top-up answered by a 5xx may or may not have been applied. The position is still in
    danger, so a further top-up goes out on the first fresh read that does not show the
    first one, without waiting out its settle window or the 30 s cooldown; the first is
    reconciled as not applied once that window has passed, and the exchange's margin equals
    the audit log's."""
    async with SimServer(seed=7, scenario="calm", speed=0) as sim:
        account = await open_account(sim.rest_url, "20000", BOOK)
        settings = guard_settings(sim, account, sqlite_url, tmp_path / "spool",
                                  budgets={"cooldown_s": 30})
        margin_before = margin_of(sim, account.account_id)
        audit = reader_for(sqlite_url)
        async with guarding(settings), httpx.AsyncClient(base_url=sim.rest_url) as admin:
            # started: the streams open once start-up (rules, reconcile, first polls) is done
            await eventually(lambda: sim.counters["ws_private_connections"] > 0)
            (await admin.post("/sim/faults", json={"error_rate": 1.0})).raise_for_status()
            await pin_mark(sim, ETH, BELOW_TRIGGER)
            await eventually(lambda: bool(audit.events("UNCERTAIN")))
            uncertain_at = time.monotonic()
            (await admin.post("/sim/faults", json={"error_rate": 0.0})).raise_for_status()
            await eventually(lambda: margin_of(sim, account.account_id) > margin_before)
            rescued_in = time.monotonic() - uncertain_at
            # the first call is settled by a read a full read timeout after the 5xx
            await eventually(lambda: bool(audit.events("RECONCILED")), timeout_s=25)
        margin_after = margin_of(sim, account.account_id)
    assert rescued_in < 5, f"the rescue waited {rescued_in:.1f} s for the uncertain call"
    events = [(e.kind, (e.detail or {}).get("applied")) for e in audit.events()
              if e.kind in ("UNCERTAIN", "RECONCILED", "SUCCEEDED")]
    assert events[0] == ("UNCERTAIN", None)
    assert ("SUCCEEDED", None) in events
    assert ("RECONCILED", "false") in events
    assert margin_after - margin_before == audit.applied("ADD")


async def test_a_fast_fall_is_rescued_each_time_despite_the_default_cooldown(
    sqlite_url: str, tmp_path: Path, reader_for: Callable[[str], AuditReader],
) -> None:
    """A 1 % step every half second from 3000 to 2400 (-20 % in 10 s) crosses topup's 5 %
    trigger again and again within seconds. With the default 30 s cooldown the guard used to
    top up once and then watch the position die; a rescue is never refused by a cooldown."""
    async with SimServer(seed=7, scenario="calm", speed=0) as sim:
        account = await open_account(sim.rest_url, "20000", BOOK)
        settings = guard_settings(sim, account, sqlite_url, tmp_path / "spool",
                                  budgets={"cooldown_s": 30})
        audit = reader_for(sqlite_url)
        async with guarding(settings):
            await eventually(lambda: sim.counters["ws_private_connections"] > 0)
            price = Decimal(3000)
            while price > 2400:
                price = (price * Decimal("0.99")).quantize(Decimal("0.01"))
                await pin_mark(sim, ETH, str(price))
                await asyncio.sleep(0.5)
            await eventually(lambda: at_a_safe_distance(sim, account.account_id), timeout_s=5)
            await eventually(lambda: settled(audit))
        assert liquidated(sim, account.account_id) == []
        survivor = isolated(sim, account.account_id)
        assert survivor is not None
    adds = [a for a in audit.actions() if a.kind == "ADD"]
    assert len(adds) >= 3, "rescued several times within the cooldown"
    assert audit.applied("ADD") == sum((a.amount for a in adds), Decimal(0))


async def test_a_reopened_position_inherits_nothing_from_the_closed_one(
    sqlite_url: str, tmp_path: Path, reader_for: Callable[[str], AuditReader],
) -> None:
    """Topped up, closed, reopened on the same symbol, then in danger at once: the new
    position is topped up without waiting out the old one's 30 s cooldown."""
    async with SimServer(seed=7, scenario="calm", speed=0) as sim:
        account = await open_account(sim.rest_url, "20000", BOOK)
        settings = guard_settings(sim, account, sqlite_url, tmp_path / "spool",
                                  budgets={"cooldown_s": 30})
        audit = reader_for(sqlite_url)
        async with guarding(settings):
            await eventually(lambda: sim.counters["ws_private_connections"] > 0)
            await pin_mark(sim, ETH, BELOW_TRIGGER)
            await eventually(lambda: settled(audit) and len(audit.events("VERIFIED")) == 1)
            sim.engine.open_position(account.account_id, ETH, "ISOLATED", Decimal(-1))
            sim.flush()
            await eventually(lambda: bool(audit.observations("position_closed")))
            sim.engine.open_position(account.account_id, ETH, "ISOLATED", Decimal(1))
            sim.flush()
            reopened = margin_of(sim, account.account_id)
            view = isolated(sim, account.account_id)
            assert view is not None and view.est_liq_price is not None
            danger = (view.est_liq_price / Decimal("0.96")).quantize(Decimal("0.01"))
            await pin_mark(sim, ETH, str(danger))  # 4 % from the new liquidation price
            await eventually(lambda: margin_of(sim, account.account_id) > reopened,
                             timeout_s=5)
    assert len([a for a in audit.actions() if a.kind == "ADD"]) == 2


async def test_a_fast_fall_with_lost_answers_is_rescued_and_every_usdc_is_recorded(
    sqlite_url: str, tmp_path: Path, reader_for: Callable[[str], AuditReader],
) -> None:
    """30 % of position_margin answers are lost after the exchange applied the change, in
    the efficacy suite's fastest crash (3 %/s: -1.5 % every 0.5 s, -30 % in 12 s) at 10x:
    each lost answer is settled from the next push, further top-ups do not wait for it, the
    position survives, and the exchange's margin equals the audit log's."""
    async with SimServer(seed=11, scenario="calm", speed=0) as sim:
        account = await open_account(sim.rest_url, "20000", BOOK)
        settings = guard_settings(sim, account, sqlite_url, tmp_path / "spool",
                                  budgets={"cooldown_s": 30})
        margin_before = margin_of(sim, account.account_id)
        audit = reader_for(sqlite_url)
        async with guarding(settings), httpx.AsyncClient(base_url=sim.rest_url) as admin:
            await eventually(lambda: sim.counters["ws_private_connections"] > 0)
            # Every answer is lost until the first top-up's is (so the test cannot pass
            # without one), then 30 % of them.
            rate = 1.0
            (await admin.post("/sim/faults", json={"lost_response_rate": rate})
             ).raise_for_status()
            price = Decimal(3000)
            for _ in range(24):  # -1.5 % every 0.5 s: -30 % in 12 s
                price = (price * Decimal("0.985")).quantize(Decimal("0.01"))
                await pin_mark(sim, ETH, str(price))
                await asyncio.sleep(0.5)
                if rate == 1.0 and audit.events("UNCERTAIN"):
                    rate = 0.3
                    (await admin.post("/sim/faults", json={"lost_response_rate": rate})
                     ).raise_for_status()
            (await admin.post("/sim/faults", json={"lost_response_rate": 0})
             ).raise_for_status()
            await eventually(lambda: settled(audit), timeout_s=20)
        assert liquidated(sim, account.account_id) == []
        margin_after = margin_of(sim, account.account_id)
        lost = sim.counters["fault_lost_response"]
    assert lost > 0, "some answers were lost"
    assert audit.events("UNCERTAIN")
    assert margin_after - margin_before == audit.applied("ADD")


async def test_a_gap_beyond_liquidation_is_recorded_as_a_liquidation_and_explained(
    sqlite_url: str, tmp_path: Path, reader_for: Callable[[str], AuditReader],
) -> None:
    """The mark gaps 20 % in one step, past the isolated position's liquidation price: no
    top-up can follow. The audit log records a ``position_liquidated`` from the exchange's
    liquidation data (not a close), and ``guardbot audit why`` explains it."""
    async with SimServer(seed=7, scenario="calm", speed=0) as sim:
        account = await open_account(sim.rest_url, "20000", BOOK)
        settings = guard_settings(sim, account, sqlite_url, tmp_path / "spool")
        audit = reader_for(sqlite_url)
        async with guarding(settings):
            await eventually(lambda: sim.counters["ws_private_connections"] > 0)
            await pin_mark(sim, ETH, "2400")
            await eventually(lambda: bool(audit.observations("position_liquidated")))
        [record] = audit.observations("position_liquidated")
        [event] = liquidated(sim, account.account_id)
    assert record.symbol == ETH and Decimal(record.detail["transfer_price"]) == 2400
    assert record.detail["liquidation_id"] == str(event.liquidation_id)
    assert audit.observations("position_closed") == []
    result = CliRunner().invoke(cli.main, ["audit", "why", "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    assert f"{account.account_id} {ETH}: liquidated at 2400" in result.output  # 2400.0
    assert "why: the guard never acted" in result.output and "-20.00% since" in result.output
