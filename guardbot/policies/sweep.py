"""``sweep``: return margin a position does not need to the free balance (opt-in).

When the position sits farther than ``safe`` from liquidation, ask to REDUCE the excess so
that it sits exactly ``safe`` away, never more than the exchange lets go
(``risk.max_removable``), rounded down to 0.01 USDC, and only if that is at least
``min_amount`` (a sweep costs a rate-limited call and an audit row).

Hysteresis: ``reduce_floor`` (= ``safe``) declares the closest distance a sweep leaves; the
loader refuses a ``safe`` below any ADD policy's ``add_target`` on the same positions, so a
sweep never pushes a position into the band where a top-up would add the margin straight
back (base.py). ``acts_above`` (= ``safe``) promises it never acts at ``safe`` or closer,
so the guard does not evaluate it on mark ticks there.

Parameters: ``safe`` (0.20), ``min_amount`` (10 USDC).
"""

from __future__ import annotations

from decimal import Decimal

from guardbot import risk
from guardbot.domain import ActionKind, Intent
from guardbot.policies.base import (
    Number,
    PolicyContext,
    PositionView,
    decimal_param,
)

ZERO, ONE = Decimal(0), Decimal(1)


class Sweep:
    """Reduce margin down to what ``safe`` distance needs."""

    name = "sweep"

    def __init__(
        self,
        *,
        safe: Number = Decimal("0.20"),
        min_amount: Number = Decimal(10),
    ) -> None:
        self.safe = decimal_param("safe", safe, low=ZERO, high=ONE, low_inclusive=False,
                                  high_inclusive=False)
        self.min_amount = decimal_param("min_amount", min_amount, low=Decimal("0.01"))

    @property
    def reduce_floor(self) -> Decimal:
        """No REDUCE leaves the position closer to liquidation than this."""
        return self.safe

    @property
    def acts_above(self) -> Decimal:
        """It acts only beyond ``safe``, or with no liquidation price (base.py, where a
        policy never acts)."""
        return self.safe

    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[Intent]:
        distance = view.distance
        if distance is not None and distance <= self.safe:
            return []
        margin = view.position.margin
        excess = margin - view.margin_for_distance(self.safe)
        amount = risk.round_down(min(excess, view.max_removable))
        if amount < self.min_amount:
            return []
        after = view.distance_with_margin(margin - amount)
        if after is not None and after < self.safe - risk.DISTANCE_TOLERANCE:
            return []  # never reached with consistent math; refuse rather than risk it
        shown = "none" if distance is None else f"{distance:.4f}"
        return [
            view.intent(
                ActionKind.REDUCE,
                amount,
                self.name,
                f"distance {shown} above safe {self.safe}: reduce {amount}",
                urgency=ONE + (distance if distance is not None else ONE),
                safe=str(self.safe),
                max_removable=str(view.max_removable),
            )
        ]
