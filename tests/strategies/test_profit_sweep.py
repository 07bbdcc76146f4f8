"""profit_sweep: never returns more than the profit above the original allocation."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal as D
from typing import Any

import pytest

from guardbot.domain import ActionKind
from guardbot.policies.base import PolicyContext, PositionView


@pytest.mark.parametrize(
    ("changes", "original", "amount"),
    [
        # margin 400, no pnl: the built-in sweep would take 160, but it is all allocation
        ({"margin": D(400)}, D(400), None),
        # opened with 300, 100 added since: that 100 is above the allocation
        ({"margin": D(400)}, D(300), D(100)),
        # unrealized profit 30 (cost 970) on margin 400, opened with 400: equity 430
        ({"margin": D(400), "cost_position": D(970), "unsettled_pnl": D(30)}, D(400), D(30)),
        # plenty of profit, but the safe distance limits it to the built-in sweep's 160
        ({"margin": D(400)}, D(-100), D(160)),
        # profit 5 is below min_amount
        ({"margin": D(400)}, D(395), None),
        # allocation unknown: never sweep
        ({"margin": D(400)}, None, None),
        # inside the safe distance: never sweep, whatever the profit
        ({"margin": D(200)}, D(0), None),
    ],
)
def test_profit_sweep(
    strategy: Callable[..., Any],
    view: Callable[..., PositionView],
    changes: dict[str, D],
    original: D | None,
    amount: D | None,
) -> None:
    policy = strategy("file:profit_sweep")
    position = view(**changes)
    intents = policy.evaluate(position, PolicyContext(now_ms=1_000, original_margin=original))
    if amount is None:
        assert intents == []
        return
    [intent] = intents
    assert (intent.kind, intent.amount) == (ActionKind.REDUCE, amount)
    assert intent.policy == "profit_sweep"
    assert original is not None
    p = position.position
    assert p.margin - intent.amount + p.unsettled_pnl >= original


def test_params_are_the_sweeps(
    strategy: Callable[..., Any], view: Callable[..., PositionView]
) -> None:
    policy = strategy("file:profit_sweep", safe="0.3", min_amount=1)
    # margin 400: safe 0.3 (liquidation 70) needs 35 - 700 + 1000 = 335; excess 65
    [intent] = policy.evaluate(
        view(margin=D(400)), PolicyContext(now_ms=1_000, original_margin=D(0))
    )
    assert intent.amount == D(65)
