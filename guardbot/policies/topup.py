"""``topup``: add margin to a position drifting toward liquidation (runs by default).

When the distance to liquidation falls below ``trigger`` (or, if ``margin_ratio`` is set,
when the position's equity falls below ``margin_ratio`` times its maintenance margin), ask
for exactly the margin that puts the liquidation price ``target`` away from the mark again
(``risk.margin_for_distance``), rounded up to 0.01 USDC so the target is never missed by
rounding. Budgets, cooldowns and the free-balance reserve are the arbiter's business.

In a fall fast enough to cross the whole band between two marks (marks come once a second),
the trigger looks ahead: it is at least the distance the mark covers in ``reach_s`` seconds
at its adverse speed over the last ``speed_window_s`` (at most ``max_trigger``), and the
target moves out with it by the same amount. At 5 %/s with ``reach_s`` 1.5 the position is
rescued from 7.5 % to 11.5 %; in slower moves nothing changes.

Parameters: ``trigger`` (0.05) < ``target`` (0.09), fractions of the mark; ``reach_s``
(1.5; 0 turns the look-ahead off), ``max_trigger`` (0.15), ``speed_window_s`` (5);
``margin_ratio`` (off; e.g. 2 = act when equity < 2 x maintenance margin), a second,
optional trigger (docs/architecture.md, "Policies"). Without ``margin_ratio`` it declares
``acts_below`` = ``trigger`` while the mark moves slower than ``trigger / reach_s``
(``calm_while``): the guard skips it on mark ticks farther than that, and evaluates it on
every tick once the mark moves faster; with ``margin_ratio`` it is evaluated on every tick.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_UP, Decimal

from guardbot import risk
from guardbot.domain import ActionKind, Intent
from guardbot.policies.base import (
    Number,
    PolicyContext,
    PolicyParamError,
    PositionView,
    decimal_param,
    mark_speed,
)

ZERO, ONE = Decimal(0), Decimal(1)
STEP = Decimal("0.0001")  # a looked-ahead trigger, rounded up to this
MAX_TARGET = Decimal("0.99")  # a looked-ahead target stays a distance
MIN_CALM = Decimal("1e-12")  # calm_while's speed must be positive


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
        # Measured on the efficacy suite (README, "Backtest"): with 1.5 s no savable position
        # is lost at 3-5 %/s (6 of 164 without), and fewer with 2 s latencies.
        reach_s: Number = Decimal("1.5"),
        max_trigger: Number = Decimal("0.15"),
        speed_window_s: Number = Decimal(5),
    ) -> None:
        self.trigger = decimal_param(
            "trigger", trigger, low=ZERO, high=ONE, low_inclusive=False, high_inclusive=False
        )
        self.target = decimal_param("target", target, low=ZERO, high=ONE, high_inclusive=False)
        if self.target <= self.trigger:
            raise PolicyParamError(
                "target", f"must be above trigger ({self.trigger}), got {self.target}"
            )
        self.reach_s = decimal_param("reach_s", reach_s, low=ZERO)
        self.max_trigger = decimal_param("max_trigger", max_trigger, low=ZERO, high=ONE,
                                         high_inclusive=False)
        self.speed_window_s = decimal_param("speed_window_s", speed_window_s, low=ZERO,
                                            low_inclusive=False)
        self.margin_ratio = (
            None
            if margin_ratio is None
            else decimal_param("margin_ratio", margin_ratio, low=ONE, low_inclusive=False)
        )

    @property
    def add_target(self) -> Decimal:
        """The farthest distance this policy's ADDs restore (a looked-ahead rescue restores
        up to ``max_trigger`` plus the band): no REDUCE may go below it, or a sweep in a
        fast fall would hand back what the rescue just added."""
        if self.reach_s <= 0:
            return self.target
        return min(MAX_TARGET, max(self.target, self.max_trigger + self.target - self.trigger))

    def speed(self, view: PositionView, ctx: PolicyContext) -> Decimal:
        """How fast the mark moves against the position: the fraction of the price per
        second over the last ``speed_window_s`` of marks (``base.mark_speed``; 0 when it
        moves the other way or there are too few marks)."""
        move = mark_speed(ctx.recent_marks, self.speed_window_s)
        return max(ZERO, -move if view.position.qty > 0 else move)

    @property
    def calm_while(self) -> tuple[Decimal, Decimal] | None:
        """It looks ahead only once the mark moves faster than ``trigger / reach_s``: until
        then ``acts_below`` holds (base.py)."""
        if self.reach_s <= 0:
            return None
        # It looks ahead once the rounded-up reach is above the trigger, that is once the
        # reach is above the trigger rounded down to STEP.
        floor = self.trigger.quantize(STEP, rounding=ROUND_DOWN)
        # (a trigger below STEP looks ahead at any speed: calm only while the mark is still)
        return max(floor, MIN_CALM) / self.reach_s, self.speed_window_s

    @property
    def acts_below(self) -> Decimal | None:
        """It acts only below ``trigger`` while the mark is calm (``calm_while``; base.py,
        where a policy never acts); with ``margin_ratio`` it may act at any distance, so it
        promises nothing."""
        return self.trigger if self.margin_ratio is None else None

    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[Intent]:
        distance = view.distance
        if distance is None:
            return []
        trigger, target = self.trigger, self.target
        speed = self.speed(view, ctx) if self.reach_s > 0 else ZERO
        if speed > 0:  # (a still mark looks no further than the trigger, which is positive)
            ahead = min(self.max_trigger, (speed * self.reach_s).quantize(
                STEP, rounding=ROUND_UP))
            if ahead > trigger:  # the next mark may cross the whole band: look ahead
                trigger = ahead
                target = min(MAX_TARGET, ahead + (self.target - self.trigger))
        why = self._trigger(view, distance, trigger)
        if why is None:
            return []
        amount = risk.round_up(view.margin_for_distance(target) - view.position.margin)
        if amount <= 0:
            return []
        return [
            view.intent(
                ActionKind.ADD,
                amount,
                self.name,
                f"{why}: add {amount} to restore {target}",
                rescue=True,
                target=str(target),
                liquidation_price=str(view.liquidation_price),
            )
        ]

    def _trigger(self, view: PositionView, distance: Decimal, trigger: Decimal) -> str | None:
        """Why the position needs margin now, or ``None``."""
        if distance < trigger:
            return f"distance {distance:.4f} below trigger {trigger}"
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
