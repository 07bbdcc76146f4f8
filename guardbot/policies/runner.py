"""Evaluate every applicable policy on one position, isolating failures.

A policy that raises, or returns something that is not a list of valid intents for the
position it was shown, does not stop the others: its failure is returned so the daemon can
audit it (docs/architecture.md, "Policies": a policy that raises is isolated and audited).
A REDUCE leaves with the distance it would leave and the highest ``add_target`` of the
policies applying to the position, for the arbiter's floor check. Each evaluation is counted in
``guardbot_policy_evaluations_total{policy, outcome}`` with outcome ``intent``, ``none`` or
``error``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache
from typing import Any

from prometheus_client import Counter

from guardbot.domain import ActionKind, Intent
from guardbot.metrics import POLICY_EVALUATIONS
from guardbot.policies.base import PolicyContext, PositionView
from guardbot.policies.loader import LoadedPolicy


@dataclass(frozen=True, slots=True)
class PolicyFailure:
    """A policy that raised or misbehaved on one position."""

    policy: str
    account_id: str
    symbol: str
    error: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What the policies asked for on one position, and which of them failed."""

    intents: tuple[Intent, ...]
    failures: tuple[PolicyFailure, ...]


def evaluate_policies(
    policies: Sequence[LoadedPolicy],
    view: PositionView,
    ctx: PolicyContext,
    account_name: str | None = None,
) -> Evaluation:
    """Run each policy that applies to ``view``'s position. Intents are relabelled with
    the configured policy label, so audit rows name the instance, not the class."""
    position = view.position
    applicable = [
        p for p in policies if p.applies_to(position.account_id, position.symbol, account_name)
    ]
    intents: list[Intent] = []
    failures: list[PolicyFailure] = []
    for loaded in applicable:
        label = loaded.label
        try:
            result = loaded.policy.evaluate(view, _with_params(ctx, loaded.params))
            returned = _as_list(result)
            checked: Sequence[Intent] = (
                [_checked(intent, view, applicable, label) for intent in returned]
                if returned
                else ()  # nothing asked, the common case: no list built
            )
        except Exception as exc:  # isolation is the point: any failure of a plugin
            _counted(label, "error").inc()
            failures.append(
                PolicyFailure(
                    policy=label,
                    account_id=position.account_id,
                    symbol=position.symbol,
                    error=f"{type(exc).__name__}: {exc}",
                )
            )
            continue
        _counted(label, "intent" if checked else "none").inc()
        intents.extend(checked)
    return Evaluation(tuple(intents), tuple(failures))


def _with_params(ctx: PolicyContext, params: Mapping[str, Any]) -> PolicyContext:
    """``ctx`` with a policy's own ``params`` (the same ``ctx`` when both are empty)."""
    if ctx.params is params or (not params and not ctx.params):
        return ctx
    return replace(ctx, params=params)


@lru_cache(maxsize=1024)
def _counted(label: str, outcome: str) -> Counter:
    """The evaluations counter of one policy label and outcome (looked up once)."""
    return POLICY_EVALUATIONS.labels(label, outcome)


class InvalidIntent(ValueError):
    """A policy returned something the arbiter must not see."""


def _as_list(result: object) -> list[object] | tuple[object, ...]:
    if not isinstance(result, list | tuple):
        raise InvalidIntent(f"evaluate must return a list of Intent, got {type(result).__name__}")
    return result


def _checked(
    intent: object, view: PositionView, applicable: Sequence[LoadedPolicy], label: str
) -> Intent:
    """``intent``, validated, relabelled ``label`` and (a REDUCE) given what the arbiter's
    floor check needs: the highest ``add_target`` of the ``applicable`` policies."""
    if not isinstance(intent, Intent):
        raise InvalidIntent(f"expected an Intent, got {type(intent).__name__}")
    position = view.position
    if (intent.account_id, intent.symbol) != (position.account_id, position.symbol):
        raise InvalidIntent(
            f"intent for {intent.account_id}/{intent.symbol} returned while evaluating "
            f"{position.account_id}/{position.symbol}"
        )
    if not isinstance(intent.kind, ActionKind):
        raise InvalidIntent(f"kind must be an ActionKind, got {intent.kind!r}")
    amount = intent.amount
    if not isinstance(amount, Decimal) or not amount.is_finite() or amount <= 0:
        raise InvalidIntent(f"amount must be a positive Decimal, got {amount!r}")
    if not isinstance(intent.urgency, Decimal) or not intent.urgency.is_finite():
        raise InvalidIntent(f"urgency must be a finite Decimal, got {intent.urgency!r}")
    if intent.kind is ActionKind.REDUCE and amount > view.max_removable:
        # The exchange would refuse it (docs/exchange.md §7); a policy asking is a bug.
        raise InvalidIntent(
            f"REDUCE {amount} exceeds the removable maximum {view.max_removable}"
        )
    if intent.kind is ActionKind.REDUCE:
        # What the arbiter needs to keep every REDUCE out of the top-ups' band.
        after = view.distance_with_margin(position.margin - amount)
        floor = max((p.add_target for p in applicable if p.add_target is not None), default=None)
        return replace(intent, policy=label, add_floor=floor, distance_after=after)
    if intent.policy == label and intent.add_floor is None and intent.distance_after is None:
        return intent
    return replace(intent, policy=label, add_floor=None, distance_after=None)
