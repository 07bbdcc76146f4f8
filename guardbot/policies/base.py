"""The policy interface: what a strategy author implements.

A policy looks at one isolated position and says what it wants done to its margin::

    class MyPolicy:
        name = "my_policy"

        def __init__(self, *, trigger: Decimal = Decimal("0.05")) -> None:
            self.trigger = decimal_param("trigger", trigger, low=Decimal(0), high=Decimal(1))

        def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[Intent]:
            if view.distance is not None and view.distance < self.trigger:
                return [view.intent(ActionKind.ADD, Decimal("10"), self.name, "too close")]
            return []

Rules (docs/architecture.md, "Policies"): ``evaluate`` is synchronous and pure: no I/O, no clock
(time is ``ctx.now_ms``), no randomness, no state that changes what the next call returns
unless it comes from ``ctx``. Parameters arrive as keyword arguments of the constructor, which
validates them (raise ``PolicyParamError`` naming the parameter): start-up then fails with a
clear message instead of the policy failing at 3 a.m. Amounts are ``Decimal`` USDC. The
arbiter decides what is actually done (budgets, cooldowns, conflicts), so a policy simply
asks for what the position needs.

Declared distances (fractions of the mark, ``Decimal``, attributes or properties; all
optional). ``trigger``: the distance below which the policy acts; the guard polls a position
near the largest declared trigger on the fast interval. Hysteresis: a policy that ADDs up to
some distance from liquidation declares the farthest one as ``add_target``; one that REDUCEs
declares the closest distance it leaves as ``reduce_floor``. Start-up
refuses a ``reduce_floor`` below the ``add_target`` of a policy on the same positions, which
would move margin back and forth at the rate limit until the day's budget is gone; and the
arbiter refuses any REDUCE that would land below the highest ``add_target`` on its
position, declared or not by the reducing policy.

Where a policy never acts (optional; ``Decimal`` fractions in [0, 1), like the others). The
guard evaluates every policy of every position on every mark tick unless the policies of a
position promise they would return ``[]`` at its distance; then that position costs a price
comparison per tick instead of an evaluation (``guardbot.policies.quiet``). The promise::

    acts_below = Decimal("0.05")   # acts only at distances below 0.05: at 0.05 or farther,
                                   # and with no liquidation price, evaluate returns []
    acts_above = Decimal("0.20")   # acts only at distances above 0.20, or with no
                                   # liquidation price: at 0.20 or closer it returns []

Declaring both (``acts_below <= acts_above``) means it acts only outside [acts_below,
acts_above]. A promise may hold only while the market is calm::

    calm_while = (Decimal("0.0333"), Decimal(5))   # the promise holds while the mark has
                                   # moved less than 3.33 % a second over the 5 s up to the
                                   # newest of ctx.recent_marks (``mark_speed``)

and the guard evaluates the position whenever its mark moves at least that fast, in either
direction. Otherwise the promise must hold whatever else ``evaluate`` sees (context, time,
marks, parameters): a policy that may also act on something else (a margin ratio,
volatility, a schedule) at those distances declares nothing, and is evaluated on every
tick. ``topup`` declares ``acts_below`` = ``trigger`` with ``calm_while`` = ``(trigger /
reach_s, speed_window_s)`` (it looks ahead in fast falls; nothing with ``margin_ratio``),
``sweep`` ``acts_above`` = ``safe``. The promise is read from the class that defines
``evaluate``: a subclass that overrides ``evaluate`` must declare again, or it is evaluated
on every tick (an inherited promise about someone else's ``evaluate`` is ignored). A wrong
promise leaves positions unguarded: when in doubt, declare nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, runtime_checkable

from guardbot import risk
from guardbot.domain import ActionKind, Intent, MarginMode, MarkPrice, Position, SymbolRules


@dataclass(frozen=True, slots=True)
class PositionView:
    """One open isolated position, its symbol's rules and its risk figures, precomputed
    once (``guardbot.risk``) and shared by every policy."""

    position: Position
    rules: SymbolRules
    liquidation_price: Decimal | None
    # signed: negative when the mark is already past the liquidation price
    distance: Decimal | None
    max_removable: Decimal
    age_ms: int = 0
    # distance_with_margin's answers: the view is of one position version, so they hold
    _distances: dict[Decimal, Decimal | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def of(cls, position: Position, rules: SymbolRules, age_ms: int = 0) -> PositionView:
        """Build the view. Raises ``ValueError`` for a cross or closed position: policies
        only ever see open isolated positions."""
        if position.margin_mode is not MarginMode.ISOLATED:
            raise ValueError(f"{position.symbol}: policies only see isolated positions")
        if not position.is_open:
            raise ValueError(f"{position.symbol}: the position is closed")
        if position.symbol != rules.symbol:
            raise ValueError(f"rules for {rules.symbol} given for {position.symbol}")
        liquidation = risk.liquidation_price(position, rules)
        return cls(
            position=position,
            rules=rules,
            liquidation_price=liquidation,
            distance=risk.liquidation_distance(position.mark_price, liquidation, position.qty),
            max_removable=risk.max_removable(position, rules),
            age_ms=age_ms,
        )

    def margin_for_distance(self, distance: Decimal) -> Decimal:
        """The margin that puts the liquidation price ``distance`` away from the mark."""
        return risk.margin_for_distance(self.position, self.rules, distance)

    def distance_with_margin(self, margin: Decimal) -> Decimal | None:
        """The signed distance the position would have with ``margin`` instead (asked by a
        REDUCE's policy and again by the runner: solved once per margin)."""
        if margin in self._distances:
            return self._distances[margin]
        position = self.position
        liquidation = risk.liquidation_price(position, self.rules, margin)
        distance = risk.liquidation_distance(position.mark_price, liquidation, position.qty)
        self._distances[margin] = distance
        return distance

    def intent(
        self,
        kind: ActionKind,
        amount: Decimal,
        policy: str,
        reason: str,
        urgency: Decimal | None = None,
        *,
        rescue: bool = False,
        **details: str,
    ) -> Intent:
        """An intent on this position. Urgency defaults to the distance to liquidation
        (lower = more endangered; no liquidation price = least urgent)."""
        if urgency is None:
            urgency = self.distance if self.distance is not None else Decimal(1)
        return Intent(
            account_id=self.position.account_id,
            symbol=self.position.symbol,
            kind=kind,
            amount=amount,
            policy=policy,
            reason=reason,
            urgency=urgency,
            rescue=rescue,
            details=details,  # a fresh dict already
        )


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """Everything else a policy may use. Built by the daemon for each evaluation."""

    now_ms: int
    # the account's free USDC balance, if known (ADD draws on it)
    free_balance: Decimal | None = None
    # recent marks of the position's symbol, oldest first
    recent_marks: tuple[MarkPrice, ...] = ()
    # the margin the position was opened with, if known (e.g. from the audit log)
    original_margin: Decimal | None = None
    # margin added minus margin reduced by the guard on this position (audit log)
    net_added: Decimal = Decimal(0)
    # this policy's raw configured parameters (already validated by its constructor)
    params: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Policy(Protocol):
    """A margin policy. ``name`` labels its intents, metrics and audit rows."""

    name: str

    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[Intent]:
        """What this policy wants done to ``view.position`` now; ``[]`` for nothing."""
        ...


class PolicyParamError(ValueError):
    """A policy parameter is missing, of the wrong type or out of range. ``param`` names it;
    the loader adds the policy's name and stops start-up."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


Number = Decimal | str | int | float
"""What a numeric parameter may arrive as (TOML numbers and strings, or Python values)."""


def decimal_param(
    name: str,
    value: object,
    *,
    low: Decimal | None = None,
    high: Decimal | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> Decimal:
    """Parse a numeric parameter (TOML gives str, int or float) into a finite ``Decimal``
    within bounds, or raise ``PolicyParamError`` saying why."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise PolicyParamError(name, f"must be a number, got {value!r}")
    try:
        # str() first: a TOML float 0.05 becomes Decimal("0.05"), not its binary expansion
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise PolicyParamError(name, f"must be a number, got {value!r}") from None
    if not number.is_finite():
        raise PolicyParamError(name, f"must be finite, got {value!r}")
    if low is not None and (number < low or (number == low and not low_inclusive)):
        bound = ">=" if low_inclusive else ">"
        raise PolicyParamError(name, f"must be {bound} {low}, got {number}")
    if high is not None and (number > high or (number == high and not high_inclusive)):
        bound = "<=" if high_inclusive else "<"
        raise PolicyParamError(name, f"must be {bound} {high}, got {number}")
    return number


@dataclass(frozen=True, slots=True)
class Quiet:
    """Signed distances at which policies never act: from ``low`` to ``high``, both
    included; ``None`` leaves that side open. No liquidation price counts as infinitely
    far: inside when ``high`` is ``None``. A ``low`` above ``high`` holds no distance."""

    low: Decimal | None = None
    high: Decimal | None = None
    # (speed, window_s) pairs: it holds only while the mark moves slower than each speed
    # (fraction of the price a second) over its window (``calm_while`` above)
    calm: tuple[tuple[Decimal, Decimal], ...] = ()

    def __and__(self, other: Quiet) -> Quiet:
        """Where neither acts."""
        lows = [b for b in (self.low, other.low) if b is not None]
        highs = [b for b in (self.high, other.high) if b is not None]
        return Quiet(max(lows, default=None), min(highs, default=None),
                     self.calm + other.calm)


def declared_quiet(policy: object) -> Quiet | None:
    """Where ``policy`` promises never to act (its ``acts_below`` and ``acts_above``), or
    ``None`` if it promises nothing about its own ``evaluate``. Raises ``PolicyParamError``
    for a declaration that is not a ``Decimal`` in [0, 1), or an ``acts_below`` above the
    ``acts_above``."""
    below = declared_distance(policy, "acts_below")
    above = declared_distance(policy, "acts_above")
    if below is not None and above is not None and below > above:
        raise PolicyParamError("acts_below", f"must be at most acts_above ({above}), got {below}")
    declared = [name for name, value in (("acts_below", below), ("acts_above", above))
                if value is not None]  # fmt: skip
    if not declared or not all(_declared_with_evaluate(policy, name) for name in declared):
        return None
    calm = getattr(policy, "calm_while", None)
    if calm is None:
        return Quiet(below, above)
    if not _declared_with_evaluate(policy, "calm_while"):
        return None  # a condition written for another evaluate: no promise
    if not (isinstance(calm, tuple) and len(calm) == 2
            and all(isinstance(v, Decimal) and v.is_finite() and v > 0 for v in calm)):
        raise PolicyParamError("calm_while", f"must be (speed, window_s), two positive "
                               f"Decimals, got {calm!r}")
    return Quiet(below, above, (calm,))


MIN_SPAN_S = Decimal(1)  # the shortest time a speed is measured over (the marks' cadence)


def _stamp(mark: MarkPrice) -> int:
    return mark.exchange_ms


def mark_speed(marks: Sequence[MarkPrice], window_s: Decimal) -> Decimal:
    """How fast the mark moved: ``(newest - first) / first`` per second, ``newest`` the mark
    stamped last and ``first`` the earliest stamped at most ``window_s`` before it, on the
    exchange's clock (the host's may be off; the marks' order does not matter), over at
    least ``MIN_SPAN_S``; 0 with fewer than two or no time between them. The one reading of
    a speed for ``calm_while`` and the policies that declare it."""
    if len(marks) < 2:
        return Decimal(0)
    newest = max(marks, key=_stamp)
    since = newest.exchange_ms - int(window_s * 1000)
    first = min((m for m in marks if m.exchange_ms >= since), key=_stamp)
    if newest.exchange_ms <= first.exchange_ms:
        return Decimal(0)
    # Marks come once a second: two a few ms apart (a pushed mark right after a REST one, a
    # resync) would make a 1 % step read as a crash.
    seconds = max(MIN_SPAN_S, Decimal(newest.exchange_ms - first.exchange_ms) / 1000)
    return (newest.price - first.price) / first.price / seconds


def _declared_with_evaluate(policy: object, attribute: str) -> bool:
    """Whether ``attribute`` is set on the instance, or defined by the class that defines
    the ``evaluate`` it runs (or by a subclass of it)."""
    if attribute in getattr(policy, "__dict__", {}):
        return True
    for cls in type(policy).__mro__:
        if attribute in vars(cls):
            return True
        if "evaluate" in vars(cls):
            return False
    return False


def declared_distance(policy: object, attribute: str) -> Decimal | None:
    """A policy's ``trigger``, ``add_target``, ``reduce_floor``, ``acts_below`` or
    ``acts_above``, or ``None`` if it declares none.
    Raises ``PolicyParamError`` for a declaration that is not a ``Decimal`` in [0, 1)."""
    value = getattr(policy, attribute, None)
    if value is None:
        return None
    if not isinstance(value, Decimal) or not Decimal(0) <= value < Decimal(1):
        raise PolicyParamError(attribute, f"must be a Decimal in [0, 1), got {value!r}")
    return value
