"""The simulator's margin math pinned to hand-computed cases (docs/exchange.md §7)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardbot.sim import margin
from guardbot.sim.margin import MARKETS

ETH = MARKETS["PERP_ETH_USDC"]
SOL = MARKETS["PERP_SOL_USDC"]
D = Decimal


@pytest.mark.parametrize(
    ("market", "notional", "leverage", "imr", "mmr"),
    [
        # small notional: the floors win
        (ETH, D(3000), 10, D("0.1"), D("0.006")),
        (ETH, D(3000), 100, D("0.01"), D("0.006")),
        (SOL, D(1500), 5, D("0.2"), D("0.05")),
        # 1e6 USDC: 1e6^0.8 = 10^4.8 = 63095.7344; *2.512e-7 = 0.01584965; MMR = 0.6 * that
        (ETH, D(1_000_000), 100, D("0.01584965"), D("0.00950979")),
        # 1e7 USDC: 10^5.6 = 398107.1706; *2.512e-7 = 0.10000452 beats 1/10
        (ETH, D(10_000_000), 10, D("0.10000452"), D("0.06000271")),
    ],
)
def test_imr_and_mmr_with_imr_factor(
    market: margin.Market, notional: Decimal, leverage: int, imr: Decimal, mmr: Decimal
) -> None:
    assert margin.imr(market, notional, leverage).quantize(D("0.00000001")) == imr
    assert margin.mmr(market, notional).quantize(D("0.00000001")) == mmr


def test_max_leverage_shrinks_with_notional() -> None:
    assert margin.max_leverage_for(ETH, D(0)) == 100
    assert margin.max_leverage_for(ETH, D(1_000_000)) == 63  # floor(1/0.01584965)
    assert margin.max_leverage_for(SOL, D(1000)) == 10


@pytest.mark.parametrize(
    ("qty", "cost", "margin_amount", "expected"),
    [
        # long 1 @ 3000, 10x: margin 3000*(0.1+0.0006) = 301.8; (301.8-3000)/(0.006-1)
        (D(1), D(3000), D("301.8"), D("2714.49")),
        # short 2 @ 3000 with 603.6: (603.6+6000)/(2*0.006+2) = 6603.6/2.012
        (D(-2), D(-6000), D("603.6"), D("3282.11")),
        # fully collateralised long: no liquidation price
        (D(1), D(3000), D(3000), None),
    ],
)
def test_isolated_liquidation_price(
    qty: Decimal, cost: Decimal, margin_amount: Decimal, expected: Decimal | None
) -> None:
    price = margin.isolated_liquidation_price(ETH, margin_amount, qty, cost)
    assert (None if price is None else price.quantize(D("0.01"))) == expected


def test_liquidation_price_is_where_equity_meets_maintenance() -> None:
    """At 2714.49 the long above survives, one tick lower it is liquidated."""
    assert not margin.isolated_is_liquidatable(ETH, D("301.8"), D(1), D(3000), D("2714.49"))
    assert margin.isolated_is_liquidatable(ETH, D("301.8"), D(1), D(3000), D("2714.48"))


def test_liquidation_price_with_notional_dependent_mmr() -> None:
    """3000 ETH (~9e6 notional): MMR depends on price, so the solution is checked against
    the liquidation equation itself."""
    qty, cost, held = D(3000), D(9_000_000), D(1_000_000)
    price = margin.isolated_liquidation_price(ETH, held, qty, cost)
    assert price is not None
    equity = held + qty * price - cost
    maintenance = qty * price * margin.mmr(ETH, qty * price)
    assert abs(equity - maintenance) < D("0.000001")
    assert margin.mmr(ETH, qty * price) > ETH.base_mmr  # the notional term really is active


@pytest.mark.parametrize(
    ("mark", "expected"),
    [
        (D(3000), D("101.8")),  # 401.8 - 3000*0.1
        (D(2900), D("11.8")),  # 401.8 - 290 - 100 loss
        (D(3100), D("91.8")),  # 401.8 - 310; the 100 profit cannot be withdrawn
        (D(2500), D(0)),  # deep loss: nothing removable
    ],
)
def test_isolated_max_reduce(mark: Decimal, expected: Decimal) -> None:
    assert margin.isolated_max_reduce(ETH, D("401.8"), D(1), D(3000), mark, 10) == expected


def test_fill_margin_includes_fee_buffer() -> None:
    assert margin.isolated_fill_margin(D(3000), D("-0.5"), 20) == D("75.9")  # 1500*(0.05+0.0006)
    assert margin.isolated_fill_margin(D(3000), D(1), 3) == D("1001.8")  # 1000 + 1.8


def test_cross_liquidation_price_closed_form() -> None:
    # long 1 @ mark 3000, TCV 1000, ΣMM = 18: 3000 + (1000-18)/(0.006-1) = 2012.07
    price = margin.cross_liquidation_price(ETH, D(1), D(3000), D(1000), D(18))
    assert price is not None and price.quantize(D("0.01")) == D("2012.07")


@given(
    market=st.sampled_from(sorted(MARKETS)),
    qty=st.decimals(min_value=D("-50"), max_value=D("50"), places=4).filter(lambda q: q != 0),
    entry=st.decimals(min_value=D("0.5"), max_value=D("100000"), places=2),
    leverage=st.integers(min_value=1, max_value=50),
    extra=st.decimals(min_value=D("-0.5"), max_value=D("3"), places=3),
    where=st.decimals(min_value=D("0.000000001"), max_value=D("0.999999999"), places=9),
)
@settings(max_examples=400, deadline=None)
def test_no_mark_inside_the_safe_marks_is_a_liquidation(
    market: str, qty: Decimal, entry: Decimal, leverage: int, extra: Decimal, where: Decimal
) -> None:
    """The filter never spares a mark the exact test would liquidate at: any mark strictly
    inside the interval, its ends included just inside, is no liquidation (margins from
    half the opening one to four times it, MMR at its floor or above)."""
    rules = MARKETS[market]
    cost = qty * entry
    held = margin.usdc(abs(cost) / leverage * (1 + extra))
    low, high = margin.isolated_safe_marks(rules, held, qty, cost)
    if low >= high:
        return
    bottom = max(low, D(0))
    for mark in (bottom + (high - bottom) * where, bottom.next_plus(), high.next_minus()):
        if bottom < mark < high:
            assert not margin.isolated_is_liquidatable(rules, held, qty, cost, mark)


@pytest.mark.parametrize("qty", [D(1), D(-1)])
def test_the_safe_marks_end_next_to_the_liquidation_price(qty: Decimal) -> None:
    """A filter that stops short of the liquidation price by a hair, not by a margin that
    would send most ticks to the exact test; a closed position has none."""
    cost, held = qty * 3000, D("301.8")
    low, high = margin.isolated_safe_marks(ETH, held, qty, cost)
    price = margin.isolated_liquidation_price(ETH, held, qty, cost)
    assert price is not None
    edge = low if qty > 0 else high
    assert abs(edge - price) < D("0.001")
    assert margin.isolated_safe_marks(ETH, held, D(0), D(0)) == (D(0), D(0))
