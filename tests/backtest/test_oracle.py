"""The oracle: the least one-off top-up that survives a path, by the simulator's own test."""

from __future__ import annotations

from decimal import Decimal

from guardbot.backtest.oracle import MICRO, least_extra, verdict, worst_mark
from guardbot.config import BudgetSettings
from guardbot.sim import margin as m
from guardbot.sim.margin import MARKETS

ETH = MARKETS["PERP_ETH_USDC"]


def test_the_least_extra_is_exact_to_the_micro_usdc() -> None:
    qty, cost, margin = Decimal(2), Decimal(6000), Decimal(600)
    for worst in (Decimal(2700), Decimal(2400), Decimal(1500)):
        extra = least_extra(ETH, margin, qty, cost, worst)
        assert not m.isolated_is_liquidatable(ETH, margin + extra, qty, cost, worst)
        assert m.isolated_is_liquidatable(ETH, margin + extra - MICRO, qty, cost, worst)
    assert least_extra(ETH, margin, qty, cost, Decimal(2900)) == 0


def test_the_worst_mark_decides_for_every_mark_of_the_path() -> None:
    marks = [Decimal(p) for p in (3000, 2800, 2500, 2700, 2600)]
    assert worst_mark(Decimal(1), marks) == Decimal(2500)
    assert worst_mark(Decimal(-1), marks) == Decimal(3000)
    extra = least_extra(ETH, Decimal(600), Decimal(2), Decimal(6000), Decimal(2500))
    assert not any(m.isolated_is_liquidatable(ETH, Decimal(600) + extra, Decimal(2),
                                              Decimal(6000), p) for p in marks)


def test_savable_means_within_every_budget_and_the_free_balance() -> None:
    marks = [Decimal(3000), Decimal(2400)]
    budgets = BudgetSettings()
    needed = verdict(ETH, Decimal(600), Decimal(2), Decimal(6000), marks, budgets,
                     Decimal(10000))
    assert needed.savable and needed.binding.startswith("per_action")
    poor = verdict(ETH, Decimal(600), Decimal(2), Decimal(6000), marks, budgets, Decimal(500))
    assert not poor.savable and poor.binding.startswith("free balance")
    tight = verdict(ETH, Decimal(600), Decimal(2), Decimal(6000), marks,
                    BudgetSettings(per_position_per_day=Decimal(100)), Decimal(10000))
    assert not tight.savable and tight.cap == Decimal(100)
