"""vol_target: the target distance follows realized volatility of the recent marks."""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal as D
from typing import Any

import pytest

from guardbot.config import ConfigError
from guardbot.domain import ActionKind, MarkPrice
from guardbot.policies.base import PolicyContext, PositionView


def marks(*prices: str, step_ms: int = 1_000) -> tuple[MarkPrice, ...]:
    return tuple(MarkPrice("PERP_ALT_USDC", D(p), i * step_ms) for i, p in enumerate(prices))


CALM = marks("100", "100", "100", "100", "100", "100")
# log returns of ±ln(1.01) each second
STORMY = marks("100", "101", "100", "101", "100", "101")


def test_target_follows_volatility(strategy: Callable[..., Any]) -> None:
    policy = strategy("file:vol_target", k=3, horizon_s=60)
    assert policy.target(CALM, now_ms=10_000) == D("0.10")
    stormy = policy.target(STORMY, now_ms=10_000)
    # 5 squared returns over 5 s, 3 sigma over 60 s
    expected = 3 * math.sqrt(5 * math.log(1.01) ** 2 / 5 * 60)
    assert float(stormy) == pytest.approx(expected, rel=1e-12)
    assert stormy > D("0.2")


@pytest.mark.parametrize(
    ("recent", "now_ms", "expected"),
    [
        ((), 10_000, D("0.10")),  # no marks: the floor
        (STORMY[:4], 10_000, D("0.10")),  # fewer than min_marks
        (STORMY, 2_000, D("0.10")),  # marks after now are ignored: only 3 left
        (marks("100", "200", "100", "200", "100", step_ms=1), 10_000, D("0.5")),  # the cap
    ],
)
def test_target_edges(
    strategy: Callable[..., Any], recent: tuple[MarkPrice, ...], now_ms: int, expected: D
) -> None:
    policy = strategy("file:vol_target", k=3, horizon_s=60)
    assert policy.target(recent, now_ms) == expected


def test_tops_up_sooner_and_more_in_a_storm(
    strategy: Callable[..., Any], view: Callable[..., PositionView]
) -> None:
    policy = strategy("file:vol_target", k=3, horizon_s=60)
    # liquidation 94.74, distance 0.0526: calm trigger is 0.05, stormy 0.5 * 0.231
    position = view(margin=D(100))
    assert policy.evaluate(position, PolicyContext(now_ms=10_000, recent_marks=CALM)) == []
    [intent] = policy.evaluate(position, PolicyContext(now_ms=10_000, recent_marks=STORMY))
    assert intent.kind is ActionKind.ADD and intent.policy == "vol_target"
    target = D(intent.details["target"])
    assert target > D("0.2")
    after = position.distance_with_margin(position.position.margin + intent.amount)
    assert after is not None and after >= target - D("0.000001")
    assert intent.amount % D("0.01") == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"k": 0}, "policies[1].params.k: must be > 0"),
        ({"min_target": "0.3", "max_target": "0.2"}, "params.max_target: must be at least"),
        ({"max_target": "1"}, "params.max_target: must be < 1"),
        ({"min_marks": "2.5"}, "params.min_marks: must be a whole number"),
        ({"trigger_ratio": "1"}, "params.trigger_ratio: must be < 1"),
    ],
)
def test_bad_params(strategy: Callable[..., Any], params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        strategy("file:vol_target", **params)
    assert message in str(caught.value)
