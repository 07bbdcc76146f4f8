"""Example plugin: a top-up whose target distance scales with recent volatility.

Configure it with::

    [[policies]]
    use = "file:vol_target"
    params = { k = "3", horizon_s = 3600, min_target = "0.10", max_target = "0.50" }

The built-in ``topup`` keeps the liquidation price a fixed fraction away from the mark. In a
calm market that ties up margin for nothing; in a storm it is not enough. This policy
estimates the realized volatility from the marks in ``ctx.recent_marks`` (sum of squared log
returns per second of elapsed time) and keeps the liquidation price ``k`` standard
deviations of a ``horizon_s`` move away: ``target = clamp(k * sigma * sqrt(horizon_s),
min_target, max_target)``. It tops up when the distance falls below ``trigger_ratio *
target``. With too few marks it falls back to ``min_target``.

It declares ``add_target`` = ``max_target``, so the loader refuses a sweep whose ``safe`` is
closer than that (it would ping-pong with this policy in a storm).

Like every policy it is pure: no I/O, no clock (marks after ``ctx.now_ms`` are ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from itertools import pairwise

from guardbot import risk
from guardbot.domain import ActionKind, Intent, MarkPrice
from guardbot.policies import PolicyContext, PolicyParamError, PositionView, decimal_param
from guardbot.policies.base import Number

ZERO, ONE = Decimal(0), Decimal(1)


class VolTarget:
    """Top up to a volatility-scaled target distance."""

    name = "vol_target"

    def __init__(
        self,
        *,
        k: Number = Decimal(3),
        horizon_s: Number = Decimal(3600),
        min_target: Number = Decimal("0.10"),
        max_target: Number = Decimal("0.50"),
        trigger_ratio: Number = Decimal("0.5"),
        min_marks: Number = 5,
    ) -> None:
        self.k = decimal_param("k", k, low=ZERO, low_inclusive=False)
        self.horizon_s = decimal_param("horizon_s", horizon_s, low=ZERO, low_inclusive=False)
        self.min_target = decimal_param(
            "min_target", min_target, low=ZERO, high=ONE, low_inclusive=False,
            high_inclusive=False,
        )
        self.max_target = decimal_param("max_target", max_target, high=ONE, high_inclusive=False)
        if self.max_target < self.min_target:
            raise PolicyParamError(
                "max_target", f"must be at least min_target ({self.min_target})"
            )
        self.trigger_ratio = decimal_param(
            "trigger_ratio", trigger_ratio, low=ZERO, high=ONE, low_inclusive=False,
            high_inclusive=False,
        )
        count = decimal_param("min_marks", min_marks, low=Decimal(2))
        if count != count.to_integral_value():
            raise PolicyParamError("min_marks", f"must be a whole number, got {count}")
        self.min_marks = int(count)

    @property
    def trigger(self) -> Decimal:
        """The farthest distance at which this policy may act (with the largest target)."""
        return self.max_target * self.trigger_ratio

    @property
    def acts_below(self) -> Decimal:
        """It never acts at ``trigger`` or farther (nor without a liquidation price): the
        guard may skip it on mark ticks that leave the position there."""
        return self.trigger

    @property
    def add_target(self) -> Decimal:
        """The farthest distance this policy's ADDs restore: no REDUCE may go below it."""
        return self.max_target

    def target(self, marks: Sequence[MarkPrice], now_ms: int) -> Decimal:
        """The target distance for these marks (oldest first)."""
        usable = [m for m in marks if m.exchange_ms <= now_ms and m.price > 0]
        if len(usable) < self.min_marks:
            return self.min_target
        elapsed_s = Decimal(usable[-1].exchange_ms - usable[0].exchange_ms) / 1000
        if elapsed_s <= 0:
            return self.min_target
        squares = sum(
            ((later.price / earlier.price).ln() ** 2 for earlier, later in pairwise(usable)),
            ZERO,
        )
        move = self.k * (squares / elapsed_s * self.horizon_s).sqrt()
        return min(self.max_target, max(self.min_target, move))

    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[Intent]:
        target = self.target(ctx.recent_marks, ctx.now_ms)
        trigger = target * self.trigger_ratio
        distance = view.distance
        if distance is None or distance >= trigger:
            return []
        amount = risk.round_up(view.margin_for_distance(target) - view.position.margin)
        if amount <= 0:
            return []
        return [
            view.intent(
                ActionKind.ADD,
                amount,
                self.name,
                f"distance {distance:.4f} below {trigger:.4f} (volatility target "
                f"{target:.4f}): add {amount}",
                rescue=True,
                target=f"{target:.6f}",
            )
        ]


POLICY = VolTarget
