"""Triage at the exchange's limit: fifty isolated positions of one account fall below the
trigger on the same tick (a market-wide step of 8 %), and the market keeps falling 0.3 % a
second. ``position_margin`` allows 10 calls a second per account, so the fiftieth top-up
cannot go out before about 5 s; the closest position is liquidated within about 2 s. Served
most endangered first, every one of them is saved; in any other order the closest ones
would not be.

Run through the backtest (the daemon's decision path on the simulated exchange's engine in
virtual time, with the exchange's rate limits) with the default config.
"""

from __future__ import annotations

from decimal import ROUND_UP, Decimal

from backtest.conftest import written_config
from guardbot.backtest.paths import PricePath
from guardbot.backtest.portfolio import Book, BookAccount, BookPosition
from guardbot.backtest.report import explain
from guardbot.backtest.runner import AuditTemplate, Scenario
from guardbot.daemon import load_policies
from guardbot.domain import ActionKind
from guardbot.sim.margin import MARKETS

COUNT = 50
STEP = 0.08  # the market-wide step down, at 10 s
FALL = 0.003  # then this much of the start a second, for 40 s
NOTIONAL = Decimal(1000)


def distance_after_step(index: int) -> Decimal:
    """Position ``index``'s distance to liquidation right after the step: 0.40 % for the
    first, 0.08 % more for each next one (4.32 % for the last)."""
    return Decimal("0.004") + Decimal("0.0008") * index


def path() -> PricePath:
    offsets = list(range(0, 51_000, 1000))
    factors = [1.0 if t < 10_000 else 1 - STEP - FALL * (t - 10_000) / 1000 for t in offsets]
    return PricePath("triage", 1.0, tuple(offsets), tuple(factors), adverse=True)


def book() -> Book:
    """One account, fifty longs (20x, or the symbol's most) of about 1,000 USDC on fifty
    symbols, each with the margin that puts it ``distance_after_step`` from liquidation
    after the step (flat MMR: liquidated at ``(cost - margin) / (qty * (1 - base_mmr))``)."""
    positions = []
    for index, market in enumerate(list(MARKETS.values())[:COUNT]):
        price = market.start_price
        qty = max(market.base_min, (NOTIONAL / price).quantize(market.base_tick, ROUND_UP))
        cost = qty * price
        liquidation = price * Decimal(1 - STEP) * (1 - distance_after_step(index))
        margin = (cost - liquidation * qty * (1 - market.base_mmr)).quantize(Decimal("0.01"),
                                                                                ROUND_UP)
        leverage = min(20, market.max_leverage)  # the margin must stay above the IMR
        positions.append(BookPosition(market.symbol, qty, leverage, margin=margin))
    return Book("triage", (BookAccount("fund", tuple(positions), free_usdc=Decimal(100_000)),))


def test_fifty_positions_at_risk_at_once_are_served_most_endangered_first(
    template: AuditTemplate,
) -> None:
    settings = written_config()
    result = Scenario(book(), path(), settings, load_policies(settings)).run(template)
    assert result.ledger.equal, result.ledger
    lost = [p for p in result.positions if p.guarded_liquidated_ms is not None]
    assert not lost, "\n".join(explain(result, p) for p in lost)
    assert all(p.unguarded_liquidated_ms is not None for p in result.positions), (
        "every position was at risk: its unguarded twin is liquidated")
    symbols = [m.symbol for m in list(MARKETS.values())[:COUNT]]
    first_add = {}
    for position in result.positions:
        adds = [t for t, kind, _ in position.applied if kind is ActionKind.ADD]
        assert adds, f"{position.symbol} never got a top-up"
        first_add[position.symbol] = adds[0]
    served = sorted(symbols, key=lambda s: (first_add[s], symbols.index(s)))
    assert served == symbols, "served in the order of their distance, closest first"
    spread_s = (max(first_add.values()) - min(first_add.values())) / 1000
    assert 4.0 <= spread_s <= 8.0, f"50 top-ups at the exchange's 10/s take about 5 s: {spread_s}"
