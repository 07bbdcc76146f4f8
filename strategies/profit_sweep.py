"""Example plugin: sweep only profit, never the original allocation.

Configure it with::

    [[policies]]
    use = "file:profit_sweep"
    params = { safe = "0.20", min_amount = "10" }

The built-in ``sweep`` returns any margin beyond what the ``safe`` distance needs, which can
include the margin the position was opened with. This one returns at most the position's
profit above its original allocation: after the reduce, the position's equity
(``margin + unsettled_pnl``) is still at least ``ctx.original_margin``. It also never
exceeds what the built-in sweep would take (safe distance, removable maximum, minimum
amount), which it reuses. When the original allocation is unknown it does nothing.
"""

from __future__ import annotations

from guardbot import risk
from guardbot.domain import ActionKind, Intent
from guardbot.policies import PolicyContext, PositionView
from guardbot.policies.sweep import Sweep


class ProfitSweep(Sweep):
    """Reduce margin by no more than the profit above the original allocation. Takes
    ``Sweep``'s parameters (and its ``reduce_floor``, ``safe``)."""

    name = "profit_sweep"

    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[Intent]:
        if ctx.original_margin is None:
            return []
        proposed = super().evaluate(view, ctx)
        if not proposed:
            return []
        position = view.position
        profit = position.margin + position.unsettled_pnl - ctx.original_margin
        amount = risk.round_down(min(proposed[0].amount, profit))
        if amount < self.min_amount:
            return []
        return [
            view.intent(
                ActionKind.REDUCE,
                amount,
                self.name,
                f"profit {profit:.2f} above the original allocation {ctx.original_margin}:"
                f" reduce {amount}",
                urgency=proposed[0].urgency,
                original_margin=str(ctx.original_margin),
            )
        ]


POLICY = ProfitSweep
