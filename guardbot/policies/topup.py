"""``topup``: add margin to a position drifting toward liquidation (runs by default).

When the distance to liquidation falls below ``trigger``, ask for exactly the margin that
puts the liquidation price ``target`` away from the mark again (``risk.margin_for_distance``),
rounded up to 0.01 USDC so the target is never missed by rounding. Budgets, cooldowns and
the free-balance reserve are the arbiter's business.

Parameters (fractions of the mark): ``trigger`` (default 0.05) < ``target`` (default 0.10).
"""

from __future__ import annotations

from decimal import Decimal

from guardbot import risk
from guardbot.domain import ActionKind, Intent
from guardbot.policies.base import (
    Number,
    PolicyContext,
    PolicyParamError,
    PositionView,
    decimal_param,
)

ZERO, ONE = Decimal(0), Decimal(1)


class TopUp:
    """Restore ``target`` distance when the position is closer than ``trigger``."""

    name = "topup"

    def __init__(
        self, *, trigger: Number = Decimal("0.05"), target: Number = Decimal("0.10")
    ) -> None:
        self.trigger = decimal_param(
            "trigger", trigger, low=ZERO, high=ONE, low_inclusive=False, high_inclusive=False
        )
        self.target = decimal_param("target", target, low=ZERO, high=ONE, high_inclusive=False)
        if self.target <= self.trigger:
            raise PolicyParamError(
                "target", f"must be above trigger ({self.trigger}), got {self.target}"
            )

    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[Intent]:
        distance = view.distance
        if distance is None or distance >= self.trigger:
            return []
        amount = risk.round_up(view.margin_for_distance(self.target) - view.position.margin)
        if amount <= 0:
            return []
        return [
            view.intent(
                ActionKind.ADD,
                amount,
                self.name,
                f"distance {distance:.4f} below trigger {self.trigger}: "
                f"add {amount} to restore {self.target}",
                target=str(self.target),
                liquidation_price=str(view.liquidation_price),
            )
        ]
