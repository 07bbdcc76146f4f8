"""The guard's mark ticks: a position whose mark is in its band is not evaluated, and that
never changes a decision. Driven on a ManualClock with the shipped in-memory exchange
(``guardbot.exchange.fake``) and a real SQLite audit log; the executor's workers do not
run, so an approved action stays queued (its position blocked) and is read back from the
audit log as unfinished."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path

import pytest
from factories import ACCOUNT, ALT_RULES, LONG, SHORT
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from guardbot import killswitch
from guardbot.alerts import Alert, AlertKind
from guardbot.audit.errors import AuditUnavailable
from guardbot.audit.store import ActionRecord, AuditLog, EventKind
from guardbot.clock import ManualClock
from guardbot.config import parse_config
from guardbot.domain import (
    AccountSnapshot,
    ActionKind,
    Intent,
    MarkPrice,
    Position,
    PositionKey,
    Source,
    SymbolRules,
)
from guardbot.exchange.fake import FakeExchange
from guardbot.exchange.port import MarksPushed, PositionsPushed
from guardbot.executor import Job
from guardbot.guard import Guard
from guardbot.policies.base import Policy, PolicyContext, PositionView
from guardbot.policies.loader import LoadedPolicy
from guardbot.policies.sweep import Sweep
from guardbot.policies.topup import TopUp

ALT = ALT_RULES.symbol
# Flat rates (base_imr 0.10, base_mmr 0.05): a long of 10 at cost 1000 with margin M
# liquidates at (1000 - M) / 9.5; with M = 200 at 84.21 (distance 0.158 at mark 100).
FAR = replace(LONG, margin=D(200))


class Counting:
    """A policy whose evaluations are counted; it promises what the wrapped one promises."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: Counter[str] = Counter()

    @property
    def trigger(self) -> D | None:
        return getattr(self.inner, "trigger", None)

    @property
    def acts_below(self) -> D | None:
        return getattr(self.inner, "acts_below", None)

    @property
    def acts_above(self) -> D | None:
        return getattr(self.inner, "acts_above", None)

    @property
    def calm_while(self) -> tuple[D, D] | None:
        return getattr(self.inner, "calm_while", None)

    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[Intent]:
        self.calls[view.position.symbol] += 1
        return self.inner.evaluate(view, ctx)


class Anywhere:
    """A plugin that promises nothing (it acts when the equity falls under 1.5x its
    margin, at any distance): evaluated on every tick."""

    name = "anywhere"

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[Intent]:
        self.calls += 1
        position = view.position
        if position.margin + position.unsettled_pnl < position.margin * D("0.5"):
            return [view.intent(ActionKind.ADD, D(5), self.name, "equity halved")]
        return []


class Harness:
    """One guard over some accounts, with the alerts it sent."""

    def __init__(self, audit: AuditLog, clock: ManualClock, policies: Sequence[Policy],
                 accounts: Sequence[str] = (ACCOUNT,), *, quiet_bands: bool = True,
                 rules: Sequence[SymbolRules] = (ALT_RULES,),
                 dry_run: bool = False,
                 may_act: Callable[[str], bool] | None = None) -> None:  # fmt: skip
        self.clock = clock
        self.alerts: list[Alert] = []
        settings = parse_config({
            "budgets": {"cooldown_s": 0, "per_action": "100000", "min_amount": "0.01",
                        "per_position_per_day": "1000000", "per_account_per_day": "10000000"},
            "poll": {"max_data_age_s": 5},
            "guard": {"dry_run": dry_run},
        })  # fmt: skip
        self.guard = Guard(
            settings, {a: FakeExchange(a, clock=clock) for a in accounts}, audit,
            [LoadedPolicy.of(p) for p in policies], notify=self.alerts.append, clock=clock,
            quiet_bands=quiet_bands, may_act=may_act)  # fmt: skip
        self.guard.rules = {r.symbol: r for r in rules}
        self.guard.acting = True

    async def snapshot(self, account: str, *positions: Position) -> None:
        now = self.clock.now_ms()
        await self.guard.on_snapshot(AccountSnapshot(
            account, free_collateral=D(10**7), total_collateral_value=D(10**7),
            positions=tuple(replace(p, account_id=account, exchange_ms=now, received_ms=now,
                                    source=Source.REST) for p in positions),
            exchange_ms=now, received_ms=now))  # fmt: skip

    async def tick(self, account: str, **marks: D) -> None:
        now = self.clock.now_ms()
        await self.guard.on_event(account, MarksPushed(tuple(
            MarkPrice(symbol, price, now) for symbol, price in marks.items())))

    def blocked(self, account: str = ACCOUNT) -> set[str]:
        return {key[1] for key in self.guard.executor.blocked() if key[0] == account}


async def queued(audit: AuditLog, account: str) -> list[tuple[str, str, D, str]]:
    """The actions the guard queued on the account: (symbol, kind, amount, policy), by
    symbol (the ones of a round share their millisecond)."""
    return sorted((a.record.symbol, a.record.kind.value, a.record.amount, a.record.policy)
                  for a in await audit.unfinished_actions([account]))  # fmt: skip


async def test_a_far_position_costs_no_evaluation_and_a_plugin_promising_nothing_runs(
    audit: AuditLog,
) -> None:
    clock = ManualClock()
    topup, sweep, anywhere = Counting(TopUp(reach_s=0)), Counting(Sweep()), Anywhere()
    harness = Harness(audit, clock, [topup, sweep, anywhere])
    await harness.snapshot(ACCOUNT, FAR)
    for price in ("99", "101", "98.5", "102"):
        clock.advance(1)
        await harness.tick(ACCOUNT, PERP_ALT_USDC=D(price))
    assert anywhere.calls == 5, "evaluated on the snapshot and on every tick"
    # its promise-less plugin keeps the position evaluated: so are topup and sweep, as now
    assert (topup.calls[ALT], sweep.calls[ALT]) == (5, 5)
    only_promising = Harness(audit, clock, [topup, sweep])
    await only_promising.snapshot(ACCOUNT, FAR)
    for price in ("99", "101", "98.5", "102"):
        clock.advance(1)
        await only_promising.tick(ACCOUNT, PERP_ALT_USDC=D(price))
    assert (topup.calls[ALT], sweep.calls[ALT]) == (5, 5), "nothing more: all in the band"
    assert not only_promising.blocked() and not only_promising.guard.is_urgent(ACCOUNT)


@pytest.mark.parametrize(
    ("position", "mark", "kind"),
    [
        # long: liquidation 84.21; at 86 the distance is 0.021, below the trigger 0.05
        (FAR, D(86), "ADD"),
        # at 110 it is 0.234, beyond the sweep's safe 0.20
        (FAR, D(110), "REDUCE"),
        # short: liquidation (1000 + 200) / 10.5 = 114.29; at 112 the distance is 0.020
        (replace(SHORT, margin=D(200)), D(112), "ADD"),
    ],
)
async def test_a_mark_leaving_the_band_is_evaluated_on_that_same_tick(
    audit: AuditLog, position: Position, mark: D, kind: str
) -> None:
    clock = ManualClock()
    harness = Harness(audit, clock, [TopUp(), Sweep(min_amount="1")])
    reference = Harness(audit, clock, [TopUp(), Sweep(min_amount="1")], ["0x" + "ef" * 32],
                        quiet_bands=False)  # fmt: skip
    for h, account in ((harness, ACCOUNT), (reference, "0x" + "ef" * 32)):
        await h.snapshot(account, position)
        clock.advance(1)
        await h.tick(account, PERP_ALT_USDC=D(100))
        assert not h.blocked(account)
        await h.tick(account, PERP_ALT_USDC=mark)
        assert h.blocked(account) == {ALT}, "acted on the tick that left the band"
    mine, theirs = await queued(audit, ACCOUNT), await queued(audit, "0x" + "ef" * 32)
    assert mine == theirs and [k for _, k, _, _ in mine] == [kind]


async def test_a_top_up_on_margin_ratio_is_evaluated_on_every_tick(audit: AuditLog) -> None:
    """``margin_ratio`` acts on the equity at any distance, so it promises nothing: at 93
    the distance is 0.095, far above the trigger, but the equity (130) is below 3x the
    maintenance margin (139.5)."""
    clock = ManualClock()
    topup = Counting(TopUp(margin_ratio=3, target="0.10"))
    harness = Harness(audit, clock, [topup])
    await harness.snapshot(ACCOUNT, FAR)
    await harness.tick(ACCOUNT, PERP_ALT_USDC=D(95))
    assert not harness.blocked() and topup.calls[ALT] == 2
    await harness.tick(ACCOUNT, PERP_ALT_USDC=D(93))
    assert harness.blocked() == {ALT}
    [(_, kind, _, _)] = await queued(audit, ACCOUNT)
    assert kind == "ADD"


async def test_urgency_and_stale_data_are_kept_for_positions_in_their_band(
    audit: AuditLog,
) -> None:
    clock = ManualClock()
    topup = Counting(TopUp(reach_s=0))  # trigger 0.05: urgent below 0.10
    harness = Harness(audit, clock, [topup])
    await harness.snapshot(ACCOUNT, FAR)
    await harness.tick(ACCOUNT, PERP_ALT_USDC=D(91))  # distance 0.075
    assert harness.guard.is_urgent(ACCOUNT)
    await harness.tick(ACCOUNT, PERP_ALT_USDC=D(99))  # 0.149
    assert not harness.guard.is_urgent(ACCOUNT)
    clock.advance(6)  # past max_data_age_s (5)
    await harness.tick(ACCOUNT, PERP_ALT_USDC=D(98))
    assert harness.alerts == [], "a tick inside the cell does not visit the position"
    harness.guard.check_stale()  # the housekeeping, every second
    assert [a.kind for a in harness.alerts] == [AlertKind.DATA_STALE]
    assert topup.calls[ALT] == 0, "all of it without one evaluation"


async def test_a_position_with_a_call_not_seen_yet_is_evaluated_with_its_known_effect(
    audit: AuditLog,
) -> None:
    """A sweep of 150 succeeded but no snapshot shows it: margin 50, liquidation at 100, so
    the position is at its liquidation price while its last version (margin 200) sits in
    the band. It is evaluated in full, and topped up."""
    clock = ManualClock()
    harness = Harness(audit, clock, [TopUp(), Sweep()])
    await harness.snapshot(ACCOUNT, FAR)
    settlement = harness.guard.executor.settlement
    settlement.sent("a1", FAR.key, ActionKind.REDUCE, D(150), D(200), FAR.qty,
                    clock.now_ms())  # fmt: skip
    settlement.succeeded("a1", clock.now_ms())
    await harness.tick(ACCOUNT, PERP_ALT_USDC=D(100))
    assert harness.blocked() == {ALT}
    [(symbol, kind, _, policy)] = await queued(audit, ACCOUNT)
    assert (symbol, kind, policy) == (ALT, "ADD", "topup")


# -- the property: skipping changes nothing ------------------------------------------------

SYMBOLS = ("PERP_A_USDC", "PERP_B_USDC", "PERP_C_USDC")
RULES = (
    SymbolRules("PERP_A_USDC", base_imr=D("0.1"), base_mmr=D("0.05"), imr_factor=D(0)),
    # MMR grows from a notional of about 42,000: solved numerically
    SymbolRules("PERP_B_USDC", base_imr=D("0.01"), base_mmr=D("0.005"),
                imr_factor=D("0.000002")),
    SymbolRules("PERP_C_USDC", base_imr=D("0.02"), base_mmr=D("0.01"), imr_factor=D(0)),
)  # fmt: skip
_accounts = itertools.count(1)


def new_account() -> str:
    return f"0x{next(_accounts):064x}"


def ratio(low: str, high: str, places: int = 3) -> st.SearchStrategy[D]:
    return st.decimals(min_value=D(low), max_value=D(high), places=places)


@st.composite
def books(draw: st.DrawFn) -> list[Position]:
    symbols = draw(st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=3, unique=True))
    made = []
    for symbol in symbols:
        side = draw(st.sampled_from([1, -1]))
        size = draw(st.sampled_from([D(1), D(30), D(100)]))
        qty = side * size
        cost = qty * 1000
        margin = (size * 1000 * draw(ratio("0.01", "0.6"))).quantize(D("0.01"))
        funding = draw(ratio("-20", "20"))
        made.append(replace(LONG, symbol=symbol, qty=qty, average_open_price=D(1000),
                            cost_position=cost, mark_price=D(1000), margin=margin,
                            unsettled_pnl=-funding, leverage=draw(st.integers(2, 50))))
    return made


@st.composite
def policy_sets(draw: st.DrawFn) -> list[Policy]:
    chosen: list[Policy] = []
    if draw(st.integers(0, 3)):
        trigger = draw(ratio("0.01", "0.2"))
        # a margin ratio acts above the trigger (about 0.05 * (ratio - 1) away, flat)
        ratio_ = draw(st.one_of(st.none(), ratio("1.5", "5", 1)))
        # the look-ahead: off, the default, or far (its promise holds only while calm)
        reach = draw(st.sampled_from([D(0), D("1.5"), D(20)]))
        chosen.append(TopUp(trigger=trigger, target=trigger + D("0.05"), margin_ratio=ratio_,
                            reach_s=reach))
    if draw(st.booleans()):
        chosen.append(Sweep(safe=draw(ratio("0.25", "0.6")),
                            min_amount=draw(ratio("0.01", "30", 2))))  # fmt: skip
    if not draw(st.integers(0, 3)) or not chosen:
        chosen.append(Anywhere())
    return chosen


# A step: a mark move per symbol (as a factor), or a new version of one position (its
# margin as a factor), or time passing (up to past the stale limit).
steps = st.one_of(
    st.tuples(st.just("tick"), st.lists(ratio("0.85", "1.15", 4), min_size=3, max_size=3)),
    st.tuples(st.just("push"), st.tuples(st.sampled_from(SYMBOLS), ratio("0.5", "1.5"))),
    st.tuples(st.just("wait"), st.sampled_from([0.5, 3, 7])),
)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(books(), policy_sets(), st.lists(steps, min_size=1, max_size=25))
async def test_skipping_positions_in_their_band_changes_no_decision(
    audit: AuditLog, book: list[Position], policies: list[Policy],
    script: list[tuple[str, object]],
) -> None:
    """The same books, marks, pushes and time for a guard that skips positions in their
    band and one that evaluates everything: after every step (and the housekeeping that
    warns about stale data) the same positions are blocked (an action queued on the step
    that asked for it), the same urgency, the same alerts; at the end the same actions,
    amount for amount."""
    clock = ManualClock()
    skipping, full = new_account(), new_account()
    guards = [Harness(audit, clock, policies, [skipping], rules=RULES),
              Harness(audit, clock, policies, [full], rules=RULES, quiet_bands=False)]
    marks = dict.fromkeys(SYMBOLS, D(1000))
    held = {p.symbol: p for p in book}
    for harness, account in zip(guards, (skipping, full), strict=True):
        await harness.snapshot(account, *book)
    for kind, arg in script:
        if kind == "tick":
            assert isinstance(arg, list)
            marks = {s: (marks[s] * f).quantize(D("0.01")) for s, f in zip(SYMBOLS, arg,
                                                                           strict=True)}
            for harness, account in zip(guards, (skipping, full), strict=True):
                await harness.tick(account, **{s: marks[s] for s in held})
        elif kind == "push":
            assert isinstance(arg, tuple)
            symbol, factor = arg
            if symbol not in held:
                continue
            old = held[symbol]
            now = clock.now_ms()
            funding = old.qty * old.mark_price - old.cost_position - old.unsettled_pnl
            held[symbol] = replace(
                old, seq=(old.seq or 0) + 1, margin=(old.margin * factor).quantize(D("0.01")),
                mark_price=marks[symbol], exchange_ms=now, received_ms=now, source=Source.WS,
                unsettled_pnl=old.qty * marks[symbol] - old.cost_position - funding)
            for harness, account in zip(guards, (skipping, full), strict=True):
                await harness.guard.on_event(account, PositionsPushed(
                    (replace(held[symbol], account_id=account),)))
        else:
            assert isinstance(arg, float | int)
            clock.advance(arg)
        one, other = guards
        for harness in guards:
            harness.guard.check_stale()  # the housekeeping (every second): stale data
        assert one.blocked(skipping) == other.blocked(full), (kind, arg)
        assert one.guard.is_urgent(skipping) is other.guard.is_urgent(full)
        assert [a.kind for a in one.alerts] == [a.kind for a in other.alerts]
    actions = await queued(audit, skipping)
    assert actions == await queued(audit, full)
    event(f"{len(actions)} actions")



async def test_a_free_balance_older_than_the_data_limit_is_unknown(audit: AuditLog) -> None:
    """Polls fail while pushes keep the position fresh: the balance read 6 s ago (the data
    limit is 5 s) is unknown, so with a reserve to keep no ADD is sent on it; the next
    poll brings a fresh balance and the rescue goes out."""
    clock = ManualClock()
    harness = Harness(audit, clock, [TopUp()])
    budgets = harness.guard.settings.budgets.model_copy(update={"reserve": D(100)})
    harness.guard.arbiter.budgets = budgets
    await harness.snapshot(ACCOUNT, FAR)
    clock.advance(6)
    now = clock.now_ms()
    danger = replace(FAR, margin=D(60), seq=(FAR.seq or 0) + 1, exchange_ms=now,
                     received_ms=now, source=Source.WS)  # 1.1 % from liquidation
    await harness.guard.on_event(ACCOUNT, PositionsPushed((danger,)))
    assert await queued(audit, ACCOUNT) == [], "no ADD on a balance read 6 s ago"
    clock.advance(0.5)
    await harness.snapshot(ACCOUNT, replace(danger, seq=(danger.seq or 0) + 1))
    assert [(symbol, kind) for symbol, kind, _, _ in await queued(audit, ACCOUNT)] == [
        (ALT, "ADD")]


async def test_a_dry_runs_shadow_moves_only_a_dry_run_and_never_a_live_decision(
    audit: AuditLog,
) -> None:
    """Three accounts with the same position at a mark below topup's trigger. A live guard
    asks for the same top-up whether or not a dry run recorded one on its position; a dry
    run that recorded that top-up sees it made (its shadow) and asks for nothing more."""
    fresh, live, dry = ACCOUNT, "0x" + "cd" * 32, "0x" + "ef" * 32
    clock = ManualClock()
    first = Harness(audit, clock, [TopUp()], [fresh])
    await first.snapshot(fresh, FAR)
    await first.tick(fresh, PERP_ALT_USDC=D(86))
    [(_, kind, amount, _)] = await queued(audit, fresh)
    assert kind == "ADD" and amount > 0
    for account in (live, dry):  # a dry run of an earlier run topped each of them up
        action_id = await audit.record_action(ActionRecord(
            account_id=account, symbol=ALT, margin_mode=FAR.margin_mode, policy="topup",
            kind=ActionKind.ADD, amount=amount, reason="dry run", dry_run=True,
            mark_price=D(86), margin=FAR.margin, qty=FAR.qty, data_age_ms=0,
            source=Source.REST))
        await audit.record_event(action_id, account, EventKind.DRY_RUN)
    clock.advance(1)
    again = Harness(audit, clock, [TopUp()], [live])
    await again.snapshot(live, FAR)
    await again.tick(live, PERP_ALT_USDC=D(86))
    assert await queued(audit, live) == [(ALT, "ADD", amount, "topup")], "live: the same ADD"
    shadowed = Harness(audit, clock, [TopUp()], [dry], dry_run=True)
    await shadowed.snapshot(dry, FAR)
    await shadowed.tick(dry, PERP_ALT_USDC=D(86))
    assert await queued(audit, dry) == [], "dry run: its top-up counts as made"
    clock.advance(1)
    await shadowed.tick(dry, PERP_ALT_USDC=D(80))  # below the trigger even with the shadow
    [(_, kind, more, _)] = await queued(audit, dry)
    assert kind == "ADD" and more > 0


async def test_a_fast_fall_is_evaluated_in_full_though_the_position_is_in_its_band(
    audit: AuditLog,
) -> None:
    """topup's band holds only while the mark is calm (``calm_while``: slower than 5 % /
    1.5 s over the last 5 s). A position 10.5 % from liquidation (it liquidates at 89.47)
    costs no evaluation on calm ticks; when the mark falls 5 % in a second, to 95, it is
    5.8 % away, inside the calm band beyond the 5 % trigger, yet evaluated and rescued at
    once (looking 1.5 s ahead: 7.5 %), exactly as by the guard that evaluates everything."""
    clock = ManualClock()
    other = "0x" + "ef" * 32
    topup = Counting(TopUp())
    harness = Harness(audit, clock, [topup])
    reference = Harness(audit, clock, [TopUp()], [other], quiet_bands=False)
    start = replace(FAR, margin=D(150))
    both = ((harness, ACCOUNT), (reference, other))
    for guard, account in both:
        await guard.snapshot(account, start)
    for wait, price in ((1, "100"), (1, "99.9"), (1, "100"), (10, "100")):
        clock.advance(wait)
        for guard, account in both:
            await guard.tick(account, PERP_ALT_USDC=D(price))
    assert topup.calls[ALT] == 0, "calm ticks in the band cost no evaluation"
    assert not harness.blocked() and not reference.blocked(other)
    for guard, account in both:  # a poll: the data is fresh (marks alone do not confirm it)
        await guard.snapshot(account, replace(start, seq=(start.seq or 0) + 1))
    clock.advance(1)
    for guard, account in both:
        await guard.tick(account, PERP_ALT_USDC=D(95))
    assert topup.calls[ALT] == 1 and harness.blocked() == reference.blocked(other) == {ALT}
    [(_, kind, amount, _)] = await queued(audit, ACCOUNT)
    [(_, kind_ref, amount_ref, _)] = await queued(audit, other)
    assert kind == kind_ref == "ADD" and amount == amount_ref


async def test_a_trigger_off_the_look_ahead_step_keeps_topups_calm_promise(
    audit: AuditLog,
) -> None:
    """topup with trigger 0.05005 (a legal value) promises acts_below 0.05005 while the mark moves
    slower than trigger / reach_s = 3.3367 %/s. A fall from 100 to 96.665 in a second is 3.335
    %/s: below that, so the guard keeps the position 5.0056 % from liquidation in its band. The
    first version failed: topup rounds the looked-ahead trigger UP to 0.0001 (0.050025 ->
    0.0501), which is above 0.05005, so it does act there (an ADD of 36.73) -- the guard that
    evaluates everything sends the rescue, the band-skipping one sends nothing: the promise is
    broken whenever the trigger is not a multiple of 0.0001 (the guard's limit should use the
    rounded reading, or topup should round to the trigger, or calm_while should be
    (floor(trigger to STEP) / reach_s, window))."""
    clock = ManualClock()
    other = "0x" + "ef" * 32
    topup = TopUp(trigger="0.05005")
    harness = Harness(audit, clock, [topup])
    reference = Harness(audit, clock, [TopUp(trigger="0.05005")], [other], quiet_bands=False)
    start = replace(FAR, margin=D("127.65"))  # liquidates at 91.826: 8.2 % at 100
    both = ((harness, ACCOUNT), (reference, other))
    clock.advance(10)
    for guard, account in both:
        await guard.snapshot(account, start)
        await guard.tick(account, PERP_ALT_USDC=D(100))
    clock.advance(1)
    for guard, account in both:
        await guard.tick(account, PERP_ALT_USDC=D("96.665"))
    [(_, kind, amount, _)] = await queued(audit, other)
    assert (kind, amount) == ("ADD", D("36.73")), "the full evaluation rescues"
    assert await queued(audit, ACCOUNT) == [("PERP_ALT_USDC", "ADD", D("36.73"), "topup")], (
        "skipped in its band though topup acts at this mark and speed")


async def test_a_tick_visits_only_the_positions_leaving_their_band(audit: AuditLog) -> None:
    """Fifty accounts hold the same position; one was confirmed at a lower margin. A tick
    that takes only that one out of its band evaluates it alone: the others are not
    visited at all (not even for a band check)."""
    clock = ManualClock()
    topup = Counting(TopUp(reach_s=0))
    accounts = [f"0x{n:064x}" for n in range(1, 51)]
    harness = Harness(audit, clock, [topup], accounts)
    for account in accounts[1:]:
        await harness.snapshot(account, FAR)
    await harness.snapshot(accounts[0], replace(FAR, margin=D(120)))  # L 92.63, 0.074 at 100
    visited = []
    cell = harness.guard.watch.cell

    def spy(key: tuple[str, str, object], found: object) -> None:
        visited.append(key[0])
        cell(key, found)  # type: ignore[arg-type]

    harness.guard.watch.cell = spy  # type: ignore[method-assign,assignment]
    await harness.tick(accounts[0], PERP_ALT_USDC=D(97))  # 0.045 for it, 0.132 for the rest
    assert visited == [] and topup.calls[ALT] == 1
    assert await queued(audit, accounts[0]) != []
    for account in accounts[1:]:
        assert await queued(audit, account) == []


async def test_the_most_endangered_account_is_decided_first(audit: AuditLog) -> None:
    """A market-wide tick puts three accounts below the trigger at different distances:
    the most endangered one's action is submitted first, whatever the accounts' order."""
    clock = ManualClock()
    accounts = [f"0x{n:064x}" for n in (3, 1, 2)]
    harness = Harness(audit, clock, [TopUp(reach_s=0)], accounts)
    for account, margin in zip(accounts, (D(125), D(110), D(118)), strict=True):
        await harness.snapshot(account, replace(FAR, margin=margin))
    await harness.guard.warmed()  # steady state: no round waits on the audit database
    submitted = []
    submit = harness.guard.executor.submit

    async def spy(job: Job) -> str | None:
        submitted.append(job.intent.account_id)
        return await submit(job)

    harness.guard.executor.submit = spy  # type: ignore[method-assign]
    await harness.tick(accounts[0], PERP_ALT_USDC=D(96))
    # liquidation prices 92.11, 93.68 and 92.84: distances 0.041, 0.024 and 0.033
    assert submitted == [accounts[1], accounts[2], accounts[0]]


# -- review of 96f1824 (the hot path) ------------------------------------------------------

ZED_RULES = replace(ALT_RULES, symbol="PERP_ZED_USDC")


async def test_a_round_that_fails_part_way_leaves_no_stale_cell(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A poll brings new versions of two positions of one account, both 1 % from
    liquidation (margin 60: liquidates at 98.95). Evaluating the first (ALT) fails on the
    audit database (``AuditUnavailable`` from the ledger, e.g. its history read after a
    takeover), so the round stops before ZED. At 96f1824 ZED keeps the cell of its
    previous version (margin 200: calm from 93.57 up), so the next ticks at 99.5 do not
    visit it and nothing rescues it until the next poll or push; the guard that evaluates
    everything tops it up on the first tick. Fails at 96f1824."""
    clock = ManualClock()
    other = "0x" + "ef" * 32
    rules = (ALT_RULES, ZED_RULES)
    harness = Harness(audit, clock, [TopUp(reach_s=0)], rules=rules)
    reference = Harness(audit, clock, [TopUp(reach_s=0)], [other], quiet_bands=False,
                        rules=rules)  # fmt: skip
    both = ((harness, ACCOUNT), (reference, other))
    far = [FAR, replace(FAR, symbol=ZED_RULES.symbol)]
    for guard, account in both:
        await guard.snapshot(account, *far)
        await guard.tick(account, PERP_ALT_USDC=D(100), PERP_ZED_USDC=D(100))
    assert await queued(audit, ACCOUNT) == await queued(audit, other) == []
    clock.advance(1)
    danger = [replace(p, margin=D(60), seq=2) for p in far]
    net_added = audit.ledger.net_added
    failed: list[PositionKey] = []

    async def once(key: PositionKey, now_ms: int) -> D | None:
        if not failed:  # the database is back after one failed read
            failed.append(key)
            raise AuditUnavailable("cannot reach the audit database: test")
        return await net_added(key, now_ms)

    for guard, account in both:
        failed.clear()
        monkeypatch.setattr(audit.ledger, "net_added", once)
        await guard.snapshot(account, *danger)  # the round fails on ALT, logged
        monkeypatch.setattr(audit.ledger, "net_added", net_added)
        assert [k[1] for k in failed] == [ALT]
    clock.advance(1)
    for guard, account in both:
        await guard.tick(account, PERP_ALT_USDC=D("99.5"), PERP_ZED_USDC=D("99.5"))
    rescued = [(symbol, kind) for symbol, kind, _, _ in await queued(audit, other)]
    assert rescued == [(ALT, "ADD"), (ZED_RULES.symbol, "ADD")], "the full guard rescues both"
    assert [(symbol, kind) for symbol, kind, _, _ in await queued(audit, ACCOUNT)] == rescued, (
        "ZED is skipped: its cell is the one of the version before the failed round")


# -- review of be52cc5 (review3) -----------------------------------------------------------


async def test_an_account_whose_round_waits_on_the_database_does_not_hold_up_the_others(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Account A's poll brings a new ZED position 1 % from liquidation; its round reads the
    position's history from the audit database (``Ledger.net_added``: new position, not in
    memory yet), and the database is slow to answer (a PostgreSQL failover: the connect
    alone may take its 10 s timeout). Meanwhile a tick takes ALT below the trigger for A
    (distance 0.020) and for B (0.032). A is the most endangered, so it forms the first
    wave alone and waits on its lock behind the slow round; B, whose data is all in memory,
    is decided only once A's read answers, on this tick and every later one while A stays
    first. Before the waves (b9347cd) every account of a tick was decided at once and only
    A waited. Fails at be52cc5."""
    clock = ManualClock()
    a, b = ACCOUNT, "0x" + "ef" * 32
    harness = Harness(audit, clock, [TopUp(reach_s=0)], [a, b], rules=(ALT_RULES, ZED_RULES))
    closer = replace(FAR, margin=D(190))  # liquidates at 85.26
    await harness.snapshot(a, closer)
    await harness.snapshot(b, FAR)  # at 84.21
    await harness.guard.warmed()
    slow = asyncio.Event()
    reading: list[PositionKey] = []
    net_added = audit.ledger.net_added

    async def slow_for_zed(key: PositionKey, now_ms: int) -> D | None:
        if key[1] == ZED_RULES.symbol:
            reading.append(key)
            await slow.wait()
        return await net_added(key, now_ms)

    monkeypatch.setattr(audit.ledger, "net_added", slow_for_zed)
    clock.advance(1)
    zed = replace(FAR, symbol=ZED_RULES.symbol, margin=D(60))  # 98.95: 1 % at 100
    poll = asyncio.create_task(harness.snapshot(a, closer, zed))
    tick = None
    try:
        for _ in range(100):
            await asyncio.sleep(0)
        assert (a, ZED_RULES.symbol) == tuple(reading[-1][:2]), "A's round is reading"
        tick = asyncio.create_task(harness.tick(b, PERP_ALT_USDC=D(87)))
        for _ in range(200):  # B's round needs the spool's writes (threads): real time
            if harness.blocked(b):
                break
            await asyncio.sleep(0.01)
        assert harness.blocked(b) == {ALT}, "B is topped up without waiting on A's database"
    finally:
        slow.set()
        await poll
        if tick is not None:
            await tick
    assert harness.blocked(a) == {ALT, ZED_RULES.symbol}


async def until_idle(guard: Guard) -> None:
    """Until the executor has nothing queued or on the wire: its worker records through the
    spool (threads), so this waits in real time, 2 s at most."""
    for _ in range(200):
        if not guard.executor.busy():
            return
        await asyncio.sleep(0.01)


async def test_a_pause_stops_the_actions_still_waiting_in_the_queue(
    audit: AuditLog, tmp_path: Path,
) -> None:
    """A tick decides an ADD and queues it; before the account's worker takes it (behind
    other calls, or the exchange's 10/s at triage) an operator sends /pause, which creates
    the kill switch file (``guardbot.killswitch.engage``). The kill switch is read only
    when intents are decided, so the queued call still goes out after the pause: an
    operator who pauses because the guard is moving money wrongly sees it moved anyway,
    for as long as the queue takes to drain. Fails at be52cc5."""
    clock = ManualClock()
    harness = Harness(audit, clock, [TopUp(reach_s=0)])
    stop = tmp_path / "STOP"
    guard = harness.guard
    guard.settings = guard.settings.model_copy(update={
        "guard": guard.settings.guard.model_copy(update={"kill_switch_file": stop})})
    await harness.snapshot(ACCOUNT, FAR)
    await harness.tick(ACCOUNT, PERP_ALT_USDC=D(86))
    assert harness.blocked() == {ALT}, "an ADD is queued"
    assert killswitch.engage(stop, "/pause by an operator")
    workers = asyncio.create_task(guard.executor.run())
    try:
        await until_idle(guard)
    finally:
        workers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await workers
    exchange = guard.exchanges[ACCOUNT]
    assert isinstance(exchange, FakeExchange)
    assert exchange.calls == [], "no margin call after /pause"


async def test_a_lapsed_ownership_lease_stops_decisions_and_the_queued_calls(
    audit: AuditLog,
) -> None:
    """The guard asks ``may_act`` (AccountOwnership's lease, wired by the daemon as the kill
    switch is): an ADD queued while the lease held is not sent once it lapsed, and while it
    is lapsed nothing new is decided; a confirmed lease lets the next tick rescue again."""
    clock = ManualClock()
    lease = [True]
    harness = Harness(audit, clock, [TopUp(reach_s=0)], may_act=lambda _account: lease[0])
    guard = harness.guard
    await harness.snapshot(ACCOUNT, FAR)
    await harness.tick(ACCOUNT, PERP_ALT_USDC=D(86))
    assert harness.blocked() == {ALT}, "an ADD is queued"
    lease[0] = False  # e.g. this process was stopped past its lease
    assert not guard.may_act(ACCOUNT)
    workers = asyncio.create_task(guard.executor.run())
    try:
        await until_idle(guard)
        clock.advance(1)
        await harness.snapshot(ACCOUNT, FAR)
        await harness.tick(ACCOUNT, PERP_ALT_USDC=D(86))
        assert harness.blocked() == set(), "nothing decided while the lease is lapsed"
        exchange = guard.exchanges[ACCOUNT]
        assert isinstance(exchange, FakeExchange)
        assert exchange.calls == [], "no margin call without a confirmed lease"
        lease[0] = True
        clock.advance(1)
        await harness.snapshot(ACCOUNT, FAR)
        await harness.tick(ACCOUNT, PERP_ALT_USDC=D(86))
        for _ in range(200):
            if exchange.calls:
                break
            await asyncio.sleep(0.01)
        assert len(exchange.calls) == 1
    finally:
        workers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await workers
