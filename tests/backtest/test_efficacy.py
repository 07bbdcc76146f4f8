"""The efficacy suite: the scenario library through the backtest with the default config,
at falls of 0.2 %/s, 1 %/s, 3 %/s and 5 %/s (where each shape falls fastest: ``speed_for``;
at 5 %/s a mark a second crosses the whole trigger band, which topup's look-ahead covers), longs
and shorts at 5x, 10x and 20x, with every answer and with 30 % of ``position_margin``
answers lost.

It fails if a savable position is liquidated (the oracle's one top-up at the start would
have saved it within the budgets), and if the exchange's ledger of applied margin changes
differs from the audit log in any run. A failure prints what the guard decided and what
the arbiter refused on the lost position (``report.explain``).
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from backtest.conftest import written_config
from guardbot.backtest.paths import SHAPES, shape_path, speed_for
from guardbot.backtest.portfolio import Book, BookAccount, BookPosition
from guardbot.backtest.report import explain
from guardbot.backtest.results import ScenarioResult
from guardbot.backtest.runner import AuditTemplate, RunOptions, Scenario
from guardbot.backtest.venue import VenueParams
from guardbot.daemon import load_policies

RATES = (0.002, 0.01, 0.03, 0.05)  # falls per second
LEVERAGES = (5, 10, 20)
LOST = (0.0, 0.3)
# Longs on ETH see the shape, shorts on BTC its mirror (a symbol held short only).
SIDES = (("long", "PERP_ETH_USDC", Decimal("2")), ("short", "PERP_BTC_USDC", Decimal("-0.1")))


def suite_book() -> Book:
    """One account per side and leverage (budgets are per account): 6,000 USDC notional."""
    return Book("efficacy", tuple(
        BookAccount(f"{side}-{leverage}x", (BookPosition(symbol, qty, leverage),))
        for side, symbol, qty in SIDES for leverage in LEVERAGES))  # fmt: skip


def cases() -> list[tuple[str, float]]:
    """Every shape at each rate; the gap falls at once whatever the speed: it runs once."""
    found = []
    for name in SHAPES:
        speeds = [1.0] if name == "gap" else [speed_for(name, rate) for rate in RATES]
        found += [(name, speed) for speed in speeds]
    return found


def run(name: str, speed: float, lost: float, template: AuditTemplate) -> ScenarioResult:
    settings = written_config()
    scenario = Scenario(suite_book(), shape_path(name, speed), settings,
                        load_policies(settings), RunOptions(VenueParams(lost=lost, seed=7)))
    return scenario.run(template)


@pytest.mark.parametrize("lost", LOST, ids=lambda lost: f"lost{lost:g}")
@pytest.mark.parametrize(("name", "speed"), cases(),
                         ids=[f"{n}-x{s:.3g}" for n, s in cases()])
def test_no_savable_position_is_liquidated(
    name: str, speed: float, lost: float, template: AuditTemplate
) -> None:
    result = run(name, speed, lost, template)
    assert len(result.positions) == len(SIDES) * len(LEVERAGES)
    assert result.ledger.equal, (
        f"exchange {dict(result.ledger.exchange)} != audit {dict(result.ledger.audit)}, "
        f"{result.ledger.unsettled} unsettled")
    for position in result.positions:
        # The unguarded twin keeps its margin: it dies exactly when the oracle says it
        # needed more.
        assert (position.unguarded_liquidated_ms is not None) == (position.verdict.extra > 0)
    # Every loss is explained: each guarded liquidation is recorded as one, from the
    # exchange's liquidation data; and the backtest has nobody else moving margin.
    guarded_deaths = sum(p.guarded_liquidated_ms is not None for p in result.positions)
    assert result.observations["position_liquidated"] == guarded_deaths
    assert result.observations["margin_changed_by_others"] == 0
    assert result.observations["position_closed"] == 0
    lost_positions = [explain(result, p) for p in result.positions if p.lost_savable]
    assert not lost_positions, "\n".join(lost_positions)
    if lost:
        assert result.venue["lost answers"] > 0 or not result.ledger.exchange
