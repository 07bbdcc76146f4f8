"""The oracle: the least margin that, added once at the start by someone who knows the whole
path, keeps a position alive; and whether the config's budgets allow that one top-up.

The simulator liquidates an isolated position at a mark ``P`` when
``margin + qty*P - cost <= |qty|*P*MMR(|qty|*P)`` (``guardbot.sim.margin``). For a fixed
margin that condition only gets worse as the price moves against the position (for a long,
``|qty|*P*(1 - MMR)`` falls with ``P`` since ``d(N*MMR(N))/dN`` stays below 1 for every
market, the tiered MMR included), so a margin survives the whole path exactly when it
survives the path's most adverse mark. The least such margin is found by bisection on the
USDC micro-unit with the simulator's own ``isolated_is_liquidatable``: no formula of ours.

Savable: that one top-up fits ``per_action``, ``per_position_per_day``,
``per_account_per_day`` and the account's free balance above ``reserve`` at the start. A
position that needs nothing (``extra`` 0) is savable too: the guard must not lose it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from guardbot.config import BudgetSettings
from guardbot.sim import margin as m
from guardbot.sim.margin import Market

MICRO = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class Verdict:
    """``extra``: the least USDC added at the start that survives (0: it survives as it
    is); ``worst_mark`` the mark that decides; ``cap``/``binding``: the smallest budget and
    its name; ``savable``: ``extra <= cap``."""

    extra: Decimal
    worst_mark: Decimal
    cap: Decimal
    binding: str
    savable: bool


def worst_mark(qty: Decimal, marks: Sequence[Decimal]) -> Decimal:
    """The mark most against the position: the lowest for a long, the highest for a short."""
    return min(marks) if qty > 0 else max(marks)


def least_extra(market: Market, margin: Decimal, qty: Decimal, cost: Decimal,
                worst: Decimal) -> Decimal:  # fmt: skip
    """The least USDC (to the micro-unit) that keeps the position alive at ``worst``."""

    def dies(extra_micros: int) -> bool:
        return m.isolated_is_liquidatable(market, margin + extra_micros * MICRO, qty, cost,
                                          worst)  # fmt: skip

    if not dies(0):
        return Decimal(0)
    low, high = 0, 1_000_000  # dies at low; find a high that lives
    while dies(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if dies(middle):
            low = middle
        else:
            high = middle
    return high * MICRO


def caps(budgets: BudgetSettings, free_usdc: Decimal) -> list[tuple[Decimal, str]]:
    """What one top-up at the start may be, and why."""
    return [
        (budgets.per_action, f"per_action {budgets.per_action}"),
        (budgets.per_position_per_day, f"per_position_per_day {budgets.per_position_per_day}"),
        (budgets.per_account_per_day, f"per_account_per_day {budgets.per_account_per_day}"),
        (free_usdc - budgets.reserve, f"free balance {free_usdc} above reserve "
                                      f"{budgets.reserve}"),
    ]  # fmt: skip


def verdict(market: Market, margin: Decimal, qty: Decimal, cost: Decimal,
            marks: Sequence[Decimal], budgets: BudgetSettings, free_usdc: Decimal
            ) -> Verdict:  # fmt: skip
    worst = worst_mark(qty, marks)
    extra = least_extra(market, margin, qty, cost, worst)
    cap, binding = min(caps(budgets, free_usdc), key=lambda c: c[0])
    return Verdict(extra, worst, cap, binding, extra <= cap)
