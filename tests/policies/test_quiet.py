"""The mark band: where it lies for hand-computed positions, and that a position whose mark
is in its band could not have produced an intent (against evaluating its policies on
random positions, rules, parameters and marks, most of them right at the band's edges)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from guardbot.book import PositionBook
from guardbot.domain import Position, SymbolRules
from guardbot.policies.base import PolicyContext, PositionView, Quiet
from guardbot.policies.loader import LoadedPolicy
from guardbot.policies.quiet import SLACK, MarkBand, mark_band
from guardbot.policies.runner import evaluate_policies
from guardbot.policies.sweep import Sweep
from guardbot.policies.topup import TopUp

from .conftest import LONG, RULES, SHORT, view_of

TOPUP_AND_SWEEP = Quiet(D("0.05"), D("0.20"))  # topup trigger 0.05, sweep safe 0.20
WATCH = D("0.10")


def band_of(quiet: Quiet = TOPUP_AND_SWEEP, side: str = "long", **changes: object) -> MarkBand:
    band = mark_band(view_of(side, **changes), quiet, WATCH)
    assert band is not None
    return band


def test_a_long_band_in_marks() -> None:
    # liquidation at (1000 - 200) / 9.5 = 84.21; distance 1 - 84.21/m
    band = band_of(margin=D(200))
    liquidation = D(800) / D("9.5")
    assert band.calm_low == liquidation / (1 - WATCH - SLACK)  # 93.57: distance 0.10
    assert band.calm_high == liquidation / (1 - D("0.20") + SLACK)  # 105.26: distance 0.20
    assert band.near_low == liquidation / (1 - D("0.05") - SLACK)  # 88.64: distance 0.05
    assert band.near_high == liquidation / (1 - WATCH + SLACK)
    assert [band.urgency(D(m)) for m in ("100", "90", "88", "106")] == [False, True, None, None]


def test_a_short_band_in_marks() -> None:
    # liquidation at (1000 + 200) / 10.5 = 114.29; distance L/m - 1, falling with the mark
    band = band_of(side="short", margin=D(200))
    liquidation = D(1200) / D("10.5")
    assert band.calm_low == liquidation / (1 + D("0.20") - SLACK)  # 95.24
    assert band.calm_high == liquidation / (1 + WATCH + SLACK)  # 103.90
    assert band.near_high == liquidation / (1 + D("0.05") + SLACK)  # 108.84
    assert [band.urgency(D(m)) for m in ("100", "105", "109", "95")] == [False, True, None, None]


def test_no_liquidation_price_is_infinitely_far() -> None:
    only_topup = band_of(Quiet(low=D("0.05")), margin=D(1000))  # margin covers the cost
    assert [only_topup.urgency(D(m)) for m in ("0.01", "100", "1e9")] == [False] * 3
    # a sweep may act on it at any mark: no band
    assert mark_band(view_of(margin=D(1000)), TOPUP_AND_SWEEP, WATCH) is None


@pytest.mark.parametrize(
    ("quiet", "changes"),
    [
        # a long at or past its liquidation price: the price may move with the mark
        (Quiet(high=D("0.2")), {"margin": D(0)}),
        # nothing is quiet for both (a trigger above a safe distance)
        (Quiet(D("0.3"), D("0.2")), {"margin": D(200)}),
    ],
)
def test_no_band_to_trust(quiet: Quiet, changes: dict[str, object]) -> None:
    assert mark_band(view_of(**changes), quiet, WATCH) is None


def test_a_long_liquidatable_at_every_price_has_no_band() -> None:
    # MMR reaches 1/1.8 at a notional of about 360: no price leaves equity above it, and
    # risk.liquidation_price answers the mark itself (so the price moves with the mark)
    steep = replace(RULES, base_imr=D("0.01"), base_mmr=D("0.005"), imr_factor=D("0.01"))
    long = replace(LONG, qty=D(1), cost_position=D(1000), margin=D(0), unsettled_pnl=D(-900))
    at_100 = PositionView.of(long, steep)
    at_400 = PositionView.of(replace(long, mark_price=D(400), unsettled_pnl=D(-600)), steep)
    assert at_100.liquidation_price is not None and at_100.liquidation_price > 360
    assert (at_400.liquidation_price, at_400.distance) == (D(400), D(0))
    assert mark_band(at_100, Quiet(low=D("0.05")), WATCH) is None


def test_a_short_with_negative_equity_at_every_price_stays_near() -> None:
    # funding owed 1000 eats margin 0 + the short's 1000 of cost: equity(P) = -|q|*P < 0,
    # liquidation price 0, distance -1 at every mark
    view = view_of("short", margin=D(0), unsettled_pnl=D(-1000))
    assert view.liquidation_price == 0
    assert mark_band(view, Quiet(low=D("0.05")), WATCH) is None
    band = mark_band(view, Quiet(high=D("0.2")), WATCH)
    assert band is not None and band.urgency(D(100)) is True and band.urgency(D(1)) is True


# -- the property: a mark in the band means no intent, and the same urgency --------------

SYMBOL = "PERP_X_USDC"
FLAT = SymbolRules(SYMBOL, base_imr=D("0.02"), base_mmr=D("0.01"), imr_factor=D(0))
# MMR grows from a notional of about 42,000 (tests/test_risk.py's GROWING)
GROWING = SymbolRules(SYMBOL, base_imr=D("0.01"), base_mmr=D("0.005"),
                      imr_factor=D("0.000002"))  # fmt: skip


def ratio(low: str, high: str, places: int = 4) -> st.SearchStrategy[D]:
    return st.decimals(min_value=D(low), max_value=D(high), places=places)


@st.composite
def positions(draw: st.DrawFn) -> tuple[Position, SymbolRules]:
    rules = draw(st.sampled_from([FLAT, GROWING, replace(RULES, symbol=SYMBOL)]))
    side = draw(st.sampled_from([1, -1]))
    size = draw(st.decimals(min_value=D("0.001"), max_value=D(5000), places=3))
    entry = draw(ratio("1", "100000", 2))
    mark = (entry * draw(ratio("0.5", "1.5"))).quantize(D("0.01")) or D("0.01")
    leverage = draw(st.integers(1, 50))
    margin = (size * entry / leverage * draw(ratio("0.1", "3"))).quantize(D("0.01"))
    funding = draw(ratio("-50", "50"))
    qty = side * size
    cost = qty * entry
    base = LONG if side > 0 else SHORT
    position = replace(base, symbol=SYMBOL, qty=qty, average_open_price=entry,
                       cost_position=cost, mark_price=mark, margin=margin, leverage=leverage,
                       unsettled_pnl=qty * mark - cost - funding)  # fmt: skip
    return position, rules


@st.composite
def policy_sets(draw: st.DrawFn) -> list[LoadedPolicy]:
    chosen = []
    if draw(st.booleans()):
        trigger = draw(ratio("0.005", "0.6"))
        target = min(trigger + draw(ratio("0.01", "0.4")), D("0.99"))
        chosen.append(LoadedPolicy.of(TopUp(trigger=trigger, target=target)))
    if draw(st.booleans()) or not chosen:
        chosen.append(LoadedPolicy.of(Sweep(safe=draw(ratio("0.01", "0.95")),
                                            min_amount=draw(ratio("0.01", "50", 2)))))
    return chosen


def quiet_of(policies: list[LoadedPolicy]) -> Quiet:
    quiet = Quiet()
    for loaded in policies:
        assert loaded.quiet is not None
        quiet &= loaded.quiet
    return quiet


def priced(position: Position, mark: D) -> Position:
    """``position`` at ``mark`` the way the guard gets it: from the book."""
    book = PositionBook()
    book.apply(position)
    book.apply_mark(position.symbol, mark, position.exchange_ms + 1)
    current = book.get(position.key)
    assert current is not None
    return current


@settings(max_examples=600, deadline=None)
@given(positions(), policy_sets(), ratio("0", "1.2"), st.data())
def test_a_mark_in_the_band_never_needs_an_evaluation(
    case: tuple[Position, SymbolRules], policies: list[LoadedPolicy], watch: D,
    data: st.DataObject,
) -> None:
    position, rules = case
    band = mark_band(PositionView.of(position, rules), quiet_of(policies), watch)
    if band is None:
        event("no band")
        return
    edges = [e for e in (band.calm_low, band.calm_high, band.near_low, band.near_high)
             if e.is_finite() and e > 0]  # fmt: skip
    anywhere = ratio("0.2", "5", 6).map(lambda f: position.mark_price * f)
    if edges:
        # right at an edge of the band, within a few times its slack on either side
        close = st.tuples(st.sampled_from(edges), st.integers(-40, 40)).map(
            lambda t: t[0] * (1 + t[1] * SLACK / 10))
        mark = data.draw(st.one_of(close, anywhere))
    else:
        mark = data.draw(anywhere)
    near = band.urgency(mark)
    event("in the band" if near is not None else "outside the band")
    if near is None:
        return
    view = PositionView.of(priced(position, mark), rules)
    ctx = PolicyContext(now_ms=2_000, free_balance=D(10**9), original_margin=D(1),
                        net_added=D(5))  # fmt: skip
    evaluation = evaluate_policies(policies, view, ctx)
    assert evaluation.intents == () and evaluation.failures == (), (view.distance, mark)
    assert near is (view.distance is not None and view.distance < watch), view.distance
