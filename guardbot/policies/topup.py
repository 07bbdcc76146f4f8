"""``topup``: add margin to a position drifting toward liquidation (runs by default).

When the distance to liquidation falls below ``trigger`` (or, if ``margin_ratio`` is set,
when the position's equity falls below ``margin_ratio`` times its maintenance margin), ask
for exactly the margin that puts the liquidation price ``target`` away from the mark again
(``risk.margin_for_distance``), rounded up to 0.01 USDC so the target is never missed by
rounding. Budgets, cooldowns and the free-balance reserve are the arbiter's business.

Parameters: ``trigger`` (0.05) < ``target`` (0.09), fractions of the mark; ``margin_ratio``
(off; e.g. 2 = act when equity < 2 x maintenance margin), a second, optional trigger
(docs/architecture.md, "Policies"). Without ``margin_ratio`` it declares ``acts_below``
(= ``trigger``): it never acts at ``trigger`` or farther, so the guard does not evaluate it
on mark ticks there (base.py); with it, it is evaluated on every tick.
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
        self,
        *,
        trigger: Number = Decimal("0.05"),
        # 0.09, not 0.10: on the efficacy suite a rescue to 9 % saves as many positions at
        # 0.2-3 %/s and with 2 s latencies, for a little less capital; a closer target saves
        # less when the exchange is slow (README, "Backtest").
        target: Number = Decimal("0.09"),
        margin_ratio: Number | None = None,
    ) -> None:
        self.trigger = decimal_param(
            "trigger", trigger, low=ZERO, high=ONE, low_inclusive=False, high_inclusive=False
        )
        self.target = decimal_param("target", target, low=ZERO, high=ONE, high_inclusive=False)
        if self.target <= self.trigger:
            raise PolicyParamError(
                "target", f"must be above trigger ({self.trigger}), got {self.target}"
            )
        self.margin_ratio = (
            None
            if margin_ratio is None
            else decimal_param("margin_ratio", margin_ratio, low=ONE, low_inclusive=False)
        )

    @property
    def add_target(self) -> Decimal:
        """The distance this policy's ADDs restore: no REDUCE may go below it."""
        return self.target

    @property
    def acts_below(self) -> Decimal | None:
        """It acts only below ``trigger`` (base.py, where a policy never acts); with
        ``margin_ratio`` it may act at any distance, so it promises nothing."""
        return self.trigger if self.margin_ratio is None else None

    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[Intent]:
        distance = view.distance
        if distance is None:
            return []
        why = self._trigger(view, distance)
        if why is None:
            return []
        amount = risk.round_up(view.margin_for_distance(self.target) - view.position.margin)
        if amount <= 0:
            return []
        return [
            view.intent(
                ActionKind.ADD,
                amount,
                self.name,
                f"{why}: add {amount} to restore {self.target}",
                rescue=True,
                target=str(self.target),
                liquidation_price=str(view.liquidation_price),
            )
        ]

    def _trigger(self, view: PositionView, distance: Decimal) -> str | None:
        """Why the position needs margin now, or ``None``."""
        if distance < self.trigger:
            return f"distance {distance:.4f} below trigger {self.trigger}"
        if self.margin_ratio is None:
            return None
        position = view.position
        notional = abs(position.qty) * position.mark_price
        maintenance = notional * risk.mmr(notional, view.rules)
        equity = position.margin + position.unsettled_pnl
        if equity < self.margin_ratio * maintenance:
            return (
                f"equity {equity:.2f} below {self.margin_ratio} x maintenance margin "
                f"{maintenance:.2f}"
            )
        return None
