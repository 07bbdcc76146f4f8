"""topup's look-ahead, from an adversarial review of its first version (each test failed on
it): the speed is read on the exchange's clock and in its order (a skewed host or a late
mark changes nothing), the move and the span end at the same mark, a sweep may not hand
back what a looked-ahead rescue adds (the loader refuses it), and a wide band in a fast
fall still rescues.

Positions are the flat-rate alt of tests/factories.py: a long of 10 at cost 1000 with
margin M liquidates at (1000 - M) / 9.5; with M = 110 at 93.684, 6.6 % below a mark of
100.3: above the 5 % trigger, below the 7.5 % the look-ahead sets at 5 %/s.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path

import pytest
from factories import ACCOUNT, LONG
from test_guard import Harness, queued

from guardbot.audit.store import AuditLog
from guardbot.clock import ManualClock
from guardbot.config import ConfigError, parse_config
from guardbot.domain import ActionKind, MarkPrice
from guardbot.exchange.port import MarksPushed
from guardbot.policies.base import PolicyContext, PositionView
from guardbot.policies.loader import load_policies
from guardbot.policies.topup import TopUp
from policies.conftest import view_of

ALT = "PERP_ALT_USDC"
NOW = 10_000
REPO_STRATEGIES = Path(__file__).resolve().parents[1] / "strategies"


def long_at(mark: D, margin: D) -> PositionView:
    """The long at ``mark`` with no funding owed: it liquidates at (1000 - margin) / 9.5."""
    return view_of("long", margin=margin, mark_price=mark, unsettled_pnl=10 * mark - 1000)


def falling(start: D, per_s: D, seconds: int, now_ms: int = NOW) -> tuple[MarkPrice, ...]:
    """Marks once a second up to ``now_ms``, moving by ``per_s`` of ``start`` a second."""
    return tuple(MarkPrice(ALT, start * (1 + per_s * i), now_ms - (seconds - i) * 1000)
                 for i in range(seconds + 1))  # fmt: skip


# -- 1. the window is cut on the host's clock, the marks carry the exchange's ------------------


@pytest.mark.parametrize("skew_ms", [6_000, -6_000], ids=["exchange-ahead", "exchange-behind"])
async def test_the_look_ahead_survives_a_clock_skew_of_a_few_seconds(
    audit: AuditLog, skew_ms: int
) -> None:
    """``TopUp.speed`` keeps the marks with ``now_ms - window <=
    exchange_ms <= now_ms``, but the guard's ``now_ms`` is the host's clock and the marks
    are stamped by the exchange. With the host 6 s off (the exchange accepts 300 s, the
    daemon only hints at 60 s), no mark is in the window, the speed is 0 and the look-ahead
    is silently off: a long 6.6 % away in a 5 %/s fall is not rescued (the synced guard
    adds 50.54 here); the next mark (94.03) carries it to 0.4 %, where the plain 5 %
    trigger fires too late for a round trip, and the one after (87.76) past its liquidation
    price 93.68: liquidated, its margin (110) and the liquidation fee lost. A smaller skew
    drops the newest marks (host behind by 1-5 s: the speed overstated up to 2.25x, more
    capital committed) or leaves one (host ahead by over 4 s: 0).
    Fix: measure in exchange time only: the window ends at the newest mark's exchange_ms
    (not ctx.now_ms), and the span ends at that same mark."""
    position = replace(LONG, margin=D(110), mark_price=D("125.375"), unsettled_pnl=D("253.75"))
    marks = falling(D("125.375"), D("-0.05"), 4)
    accounts = {0: "0x" + "ef" * 32, skew_ms: ACCOUNT}
    clock = ManualClock()
    harnesses = {skew: Harness(audit, clock, [TopUp()], [account])
                 for skew, account in accounts.items()}  # fmt: skip
    for skew, harness in harnesses.items():
        await harness.snapshot(accounts[skew], position)
    start = clock.now_ms()
    for i, mark in enumerate(marks[1:], start=1):
        clock.advance(1)
        for skew, harness in harnesses.items():
            stamped = MarkPrice(ALT, mark.price, start + i * 1000 + skew)
            await harness.guard.on_event(accounts[skew], MarksPushed((stamped,)))
    [(_, kind, synced, _)] = await queued(audit, accounts[0])
    assert kind == "ADD" and synced > 0, "the reference: a synced clock rescues"
    assert await queued(audit, ACCOUNT) == [(ALT, "ADD", synced, "topup")], (
        f"host clock {-skew_ms / 1000:+.0f} s off the exchange's: no look-ahead rescue"
    )


# -- 2. first and last by arrival, not by time -----------------------------------------------


def test_a_delayed_mark_at_the_end_does_not_hide_a_fast_fall() -> None:
    """The guard appends every pushed mark to ``marks`` in arrival order,
    also the ones the book ignores as older than its last (book.apply_mark), and ``speed``
    takes ``marks[0]`` and ``marks[-1]`` as the oldest and newest. A delayed push stamped
    before the first mark of the window, at the end of the deque, makes the span negative
    and the speed 0 in a real 5 %/s fall: the position 6.6 % away is not rescued, and the
    next marks carry it past liquidation (as in test 1). Any evaluation before the next
    in-order mark sees it (a position push, a re-read, the answer of a call).
    Fix: take the earliest and latest exchange_ms of the marks in the window (or keep
    ``marks`` in exchange-time order and drop the ones the book refuses)."""
    fast = falling(D("125.375"), D("-0.05"), 4)[1:]  # ts 7000..10000
    late = MarkPrice(ALT, D("126"), NOW - 3_500)  # delayed 3.5 s: older than the first
    view = long_at(D("100.3"), D(110))
    in_order = PolicyContext(now_ms=NOW, recent_marks=(late, *fast))
    assert TopUp().speed(view, in_order) > D("0.05")
    arrived = PolicyContext(now_ms=NOW, recent_marks=(*fast, late))
    assert TopUp().speed(view, arrived) == TopUp().speed(view, in_order), (
        "a delayed mark at the end of the deque turns a 5 %/s fall into no fall"
    )


def test_a_delayed_mark_at_the_end_does_not_make_a_drift_a_crash() -> None:
    """Same cause as above, the other way: a delayed mark stamped 0.2 s
    after the first of the window, at the end of the deque, makes the span 0.2 s and a
    1 %/s drift reads as 20 %/s: a long 12 % away that needs nothing (trigger 5 %) is
    topped up to 19 % (the trigger jumps to max_trigger 0.15): capital locked, and budget
    and free balance gone for the next position of a cascade.
    Fix: as above."""
    drift = falling(D("104.04"), D("-0.01"), 4)  # 1 %/s: no look-ahead
    far = long_at(drift[-1].price, D(165))
    assert far.distance is not None and D("0.11") < far.distance < D("0.13")
    assert TopUp().evaluate(far, PolicyContext(now_ms=NOW, recent_marks=drift)) == []
    delayed = (*drift, MarkPrice(ALT, D("104"), NOW - 3_800))
    assert TopUp().evaluate(far, PolicyContext(now_ms=NOW, recent_marks=delayed)) == [], (
        "a delayed mark 0.2 s after the first makes a 1 %/s drift a 20 %/s crash"
    )


# -- 3. the move ends at the position's mark, the span at the last pushed mark ---------------


def test_the_span_ends_where_the_move_ends() -> None:
    """``speed`` divides the move from the first mark to
    ``view.position.mark_price`` by the time from the first mark to the LAST PUSHED one.
    The position's mark is often newer: the WebSocket marks stall (a reconnect) while REST
    polls, every second near the trigger, bring the position at a newer mark, which the
    book prefers (book.current). Marks pushed at 5 s and 6 s, then none; at 10 s the
    snapshot's mark is 95: a 1 %/s fall over 5 s, read as 5 %/s over 1 s. The position
    6.6 % away needs nothing (trigger 5 %) and is topped up to restore 11.5 %.
    Fix: end the span at the time of the price it uses (the newest mark's price and
    exchange_ms together, or the position's exchange_ms if its mark is newer)."""
    stalled = (MarkPrice(ALT, D(100), NOW - 5_000), MarkPrice(ALT, D(99), NOW - 4_000))
    view = long_at(D(95), D(157))  # 6.6 % away
    assert view.distance is not None and D("0.05") < view.distance < D("0.075")
    ctx = PolicyContext(now_ms=NOW, recent_marks=stalled)
    assert TopUp().speed(view, ctx) <= D("0.011"), "100 -> 95 in 5 s is 1 %/s"
    assert TopUp().evaluate(view, ctx) == []


# -- 4. the sweep's hysteresis promise no longer covers the looked-ahead band ----------------


def test_a_sweep_never_hands_back_what_a_look_ahead_rescue_adds() -> None:
    """The loader lets a sweep's ``safe`` go down to topup's
    ``add_target`` (0.09), so that a sweep never leaves a position where topup adds it
    straight back. With the look-ahead, topup acts up to ``max_trigger`` (0.15) and restores
    up to 0.19 while ``add_target`` stays 0.09: the loader accepts ``safe = 0.10``, and in
    an 8 %/s fall (trigger 0.12, target 0.16) a long 13.3 % away is swept down to 10 %
    (26.75 USDC out) right into the band, topped up to 16 % (48.45 USDC in) on the same
    marks (a top-up right after a sweep never waits), and swept again once the cooldown
    allows: margin taken out in the middle of a crash (if the ADD back is refused or slow,
    the position faces the crash 6 points closer), two rate-limited calls and 48.45 of the
    day's ADD budget per round trip. (The same holds for a rescued position the sweep
    reaches after the cooldown while the fall goes on.)
    Fix: declare the look-ahead's reach to the hysteresis check (e.g. add_target =
    max(target, max_trigger + target - trigger) while reach_s > 0, so the loader refuses a
    safe below 0.19), or have the arbiter refuse a REDUCE on a position whose topup is
    looking ahead."""
    with pytest.raises(ConfigError, match=r"add_target \(0\.19\)"):
        load_policies(list(parse_config({"policies": [
            {"use": "topup"}, {"use": "sweep", "params": {"safe": "0.10", "min_amount": "1"}},
        ]}).policies), REPO_STRATEGIES)  # fmt: skip


# -- 5. a looked-ahead target at or past 1 makes the policy raise ----------------------------


def test_a_wide_band_in_a_fast_fall_still_rescues() -> None:
    """``target`` may be anything below 1, and the looked-ahead target
    is ``ahead + (target - trigger)``, unbounded: with trigger 0.10 and target 0.95 (both
    accepted) a 10 %/s fall makes it 1.00, ``risk.target_liquidation_price`` raises, the
    runner isolates the failure, and the position gets no top-up at all on any tick of the
    fall, not even the one it would get without the look-ahead: the whole margin lost.
    Fix: cap the looked-ahead target below 1 (e.g. min(target + lead, max(target,
    max_trigger + ...)) or refuse at construction a band wider than 1 - max_trigger)."""
    view = long_at(D("100.3"), D(110))  # 6.6 % away
    crash = PolicyContext(now_ms=NOW, recent_marks=falling(D("167.17"), D("-0.10"), 4))
    policy = TopUp(trigger="0.10", target="0.95")
    [intent] = policy.evaluate(view, crash)
    assert intent.kind is ActionKind.ADD


def test_two_marks_a_few_ms_apart_are_no_crash() -> None:
    """A mark pushed 5 ms after another (a REST snapshot's and the stream's, a resync)
    moved 1 %: a speed is measured over at least a second (the marks' cadence), so that is
    1 %/s, not 200 %/s, and a position 6.6 % away is not topped up to 16 %."""
    view = long_at(D("100.3"), D(110))
    marks = (MarkPrice(ALT, D("101.31"), NOW - 5), MarkPrice(ALT, D("100.3"), NOW))
    speed = TopUp().speed(view, PolicyContext(now_ms=NOW, recent_marks=marks))
    assert D("0.0099") < speed < D("0.0101")
    assert TopUp().evaluate(view, PolicyContext(now_ms=NOW, recent_marks=marks)) == []
