"""The margin math of isolated positions: pure functions, ``Decimal`` in and out.

Everything follows docs/exchange.md §7 (the js-sdk's formulas; the server's are unconfirmed)
and docs/architecture.md, "Risk math". For an isolated position with margin ``M``, signed
quantity ``q``, signed cost ``C``, funding owed
``F = q*(sum_unitary_funding - last_sum_unitary_funding)`` and price ``P``::

    equity(P)  = M + q*P - C - F
    liquidated when equity(P) <= |q|*P*MMR(|q|*P)

``MMR`` grows with notional (``imr_factor * notional^0.8``), so the liquidation price is
solved exactly where ``MMR`` is flat (``base_mmr``) and numerically where it is not: in
floats, then bracketed in Decimal (``_solve``). The inverse problem (the margin that puts
the liquidation price at a given price) is explicit. Floats serve only inside the
searches and the power (``_power``, the Decimal power to the digit): every result is
Decimal, and what depends only on the rules is computed once per rules (``_curve``).

A ``Position`` carries ``unsettled_pnl = q*mark - C - F`` but not the current
``sum_unitary_funding``, so ``F`` is recovered from the snapshot itself
(``funding_owed``); re-pricing at another mark keeps ``F`` unchanged.

The simulated exchange has its own implementation of this math and never imports this
module (docs/architecture.md, "Risk math"): each side checks the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    getcontext,
    localcontext,
)
from functools import lru_cache

from guardbot.domain import ZERO, MarginMode, Position, SymbolRules

ONE = Decimal(1)
MARGIN_STEP = Decimal("0.01")
"""``position_margin`` amounts are sent with 2 decimals (docs/exchange.md §4: the UI's
precision)."""

_EXPONENT = Decimal("0.8")  # notional^(4/5), docs/exchange.md §7
_SOLVER_STEPS = 200
# Liquidation prices are solved to 1e-12 of their value (a 1e-7 USDC step at 100k),
# far below any tick; margins come from the explicit inverse, never from this tolerance.
_RELATIVE_TOLERANCE = Decimal("1e-12")
DISTANCE_TOLERANCE = _RELATIVE_TOLERANCE
"""Distances from solved liquidation prices are exact to about this: allow it when checking
a computed distance against a bound (a sweep to exactly ``safe``, a REDUCE floor)."""


def imr(notional: Decimal, leverage: int, rules: SymbolRules) -> Decimal:
    """Initial margin ratio: ``max(1/leverage, base_imr, imr_factor * notional^0.8)``.

    ``leverage`` is the position's own (symbol, margin mode) leverage, as the js-sdk uses it.
    """
    if leverage <= 0:
        raise ValueError(f"leverage must be positive, got {leverage}")
    return _imr_rate(leverage, rules.base_imr, rules.imr_factor).at(notional)


def mmr(notional: Decimal, rules: SymbolRules) -> Decimal:
    """Maintenance margin ratio:
    ``max(base_mmr, (base_mmr/base_imr) * imr_factor * notional^0.8)``."""
    if rules.base_imr <= 0:
        raise ValueError(f"{rules.symbol}: base_imr must be positive, got {rules.base_imr}")
    return _curve(rules.base_imr, rules.base_mmr, rules.imr_factor).mmr.at(notional)


def funding_owed(position: Position) -> Decimal:
    """``q*(sum_unitary_funding - last_sum_unitary_funding)``, recovered from the snapshot's
    ``unsettled_pnl = q*mark - cost - funding`` (docs/exchange.md §7, PnL)."""
    return position.qty * position.mark_price - position.cost_position - position.unsettled_pnl


def liquidation_price(
    position: Position, rules: SymbolRules, margin: Decimal | None = None
) -> Decimal | None:
    """The mark price at which the isolated position is liquidated, or ``None`` when no
    positive price liquidates it (a long whose margin covers its whole cost, or a closed
    position). ``margin`` replaces the position's own margin (what an ADD or a REDUCE
    would leave).

    A long liquidates at or below the returned price, a short at or above it. If a long is
    liquidatable at every price (a maintenance ratio so high that the notional outgrows the
    equity, far beyond any leverage the exchange allows), the result is the higher of the
    best-case price and the mark, so its distance is never reported as safe. Numerical
    results are rounded toward the mark (the conservative side).

    Raises ``ValueError`` for a cross position: its risk is the account's, not its own.
    """
    if position.margin_mode is not MarginMode.ISOLATED:
        raise ValueError(f"{position.symbol} is a cross position; its liquidation is account-wide")
    base_mmr = rules.base_mmr
    if not (ZERO <= base_mmr < ONE and rules.base_imr > 0 and rules.imr_factor >= 0):
        raise ValueError(
            f"{rules.symbol}: implausible margin rules base_imr={rules.base_imr} "
            f"base_mmr={base_mmr} imr_factor={rules.imr_factor}"
        )
    qty = position.qty
    if qty == 0:
        return None
    size = abs(qty)
    # equity(P) - maintenance(P) as a function of the notional N = |q|*P:
    #   long:  k + N - N*mmr(N)      short: k - N - N*mmr(N)
    own = position.margin if margin is None else margin
    k = own - position.cost_position - funding_owed(position)
    curve = _curve(rules.base_imr, base_mmr, rules.imr_factor)
    flat_end = curve.mmr.start
    if qty > 0:
        if k >= 0:
            return None
        flat_root = -k / (ONE - base_mmr)
        if flat_end is None or flat_root <= flat_end:
            return flat_root / size
        # Beyond the flat part the surplus rises until mmr reaches 1/1.8, then falls.
        peak, peak_maintenance = curve.peak, curve.peak_maintenance
        assert peak is not None and peak_maintenance is not None  # flat_end: mmr grows
        if k + peak - peak_maintenance <= 0:
            return max(peak / size, position.mark_price)
        low = min(flat_end, peak)
        start = min(max(flat_root, low), peak)
        return _solve(curve, k, rising=True, low=low, high=peak, start=start) / size
    if k <= 0:
        # Equity is negative at every price: liquidatable now, whatever the mark.
        return ZERO
    flat_root = k / (ONE + base_mmr)
    if flat_end is None or flat_root <= flat_end:
        return flat_root / size
    # surplus(flat_end) > 0 and surplus(k) = -k*mmr(k) < 0; strictly falling in between.
    return _solve(curve, k, rising=False, low=flat_end, high=k, start=flat_end) / size


def liquidation_distance(
    mark_price: Decimal, liquidation_price: Decimal | None, qty: Decimal | None = None
) -> Decimal | None:
    """``|mark - liq| / mark``, a fraction of the mark (0.05 = 5 % away); ``None`` without a
    liquidation price (no risk).

    With the position's signed ``qty`` the result is signed: negative when the mark is
    already past the liquidation price (below it for a long, above it for a short), which
    the unsigned form would report as a comfortable distance.
    """
    if liquidation_price is None:
        return None
    if mark_price <= 0:
        raise ValueError(f"mark price must be positive, got {mark_price}")
    distance = abs(mark_price - liquidation_price) / mark_price
    if qty is not None and qty != 0:
        past = mark_price < liquidation_price if qty > 0 else mark_price > liquidation_price
        if past:
            return -distance
    return distance


def effective_leverage(position: Position) -> Decimal | None:
    """``notional / (margin + unsettled_pnl)`` (docs/exchange.md §7); ``None`` when the equity
    is zero or negative (unbounded leverage)."""
    equity = position.margin + position.unsettled_pnl
    if equity <= 0:
        return None
    return abs(position.qty) * position.mark_price / equity


def target_liquidation_price(position: Position, distance: Decimal) -> Decimal:
    """The price ``distance`` (a fraction of the mark) on the losing side of the mark."""
    if not ZERO <= distance < ONE:
        raise ValueError(f"distance must be in [0, 1), got {distance}")
    if position.qty > 0:
        return position.mark_price * (ONE - distance)
    return position.mark_price * (ONE + distance)


def margin_for_distance(position: Position, rules: SymbolRules, distance: Decimal) -> Decimal:
    """The isolated margin at which the liquidation price sits exactly ``distance`` from
    the current mark (on the losing side), never negative.

    Explicit inverse of ``liquidation_price``: at the target price ``P_L`` the equity
    equals the maintenance margin, so
    ``M = |q|*P_L*mmr(|q|*P_L) - q*P_L + cost + funding``. Callers round the difference
    with the current margin themselves (top-ups up, reductions down).
    """
    if position.qty == 0:
        raise ValueError(f"{position.symbol}: no position, no margin to compute")
    target = target_liquidation_price(position, distance)
    notional = abs(position.qty) * target
    needed = (
        notional * mmr(notional, rules)
        - position.qty * target
        + position.cost_position
        + funding_owed(position)
    )
    return max(ZERO, needed)


def max_removable(position: Position, rules: SymbolRules) -> Decimal:
    """The most margin a REDUCE may take (js-sdk rule, docs/exchange.md §7):
    ``max(0, margin - notional*IMR + min(0, unsettled_pnl))``; unrealized profit cannot be
    withdrawn, an unrealized loss lowers the amount."""
    notional = abs(position.qty) * position.mark_price
    ratio = imr(notional, position.leverage, rules)
    return max(ZERO, position.margin - notional * ratio + min(ZERO, position.unsettled_pnl))


def round_up(amount: Decimal, step: Decimal = MARGIN_STEP) -> Decimal:
    """Round up to a multiple of ``step``: top-ups never fall short of their target."""
    return _to_step(amount, step, ROUND_CEILING)


def round_down(amount: Decimal, step: Decimal = MARGIN_STEP) -> Decimal:
    """Round down to a multiple of ``step``: reductions never take more than allowed."""
    return _to_step(amount, step, ROUND_FLOOR)


def _to_step(amount: Decimal, step: Decimal, rounding: str) -> Decimal:
    if step is MARGIN_STEP:
        # the same as below for any amount of up to 28 digits, in one operation
        return amount.quantize(MARGIN_STEP, rounding=rounding)
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")
    # quantize: the result carries the step's decimals ("50.00"), as sent on the wire
    return ((amount / step).to_integral_value(rounding=rounding) * step).quantize(step)


@dataclass(frozen=True, slots=True)
class _Rate:
    """``max(floor, factor * N^0.8)`` of a notional ``N``, with ``start``, the notional
    where the second term takes over (``None``: never), so that below it no power is
    taken."""

    floor: Decimal
    factor: Decimal
    start: Decimal | None

    @classmethod
    def of(cls, floor: Decimal, factor: Decimal) -> _Rate:
        # the notional where factor * N^0.8 reaches floor
        return cls(floor, factor, None if factor <= 0 else (floor / factor) ** Decimal("1.25"))

    def at(self, notional: Decimal) -> Decimal:
        if self.start is None or notional <= self.start:
            return self.floor
        return max(self.floor, self.factor * _power(notional))


# What the caches below keep is computed in this context, whatever the first caller's: a
# plugin calling under a narrow context must not skew every later answer for the symbol.
_CACHED = Context(prec=28, rounding=ROUND_HALF_EVEN)


@lru_cache(maxsize=1024)
def _imr_rate(leverage: int, base_imr: Decimal, imr_factor: Decimal) -> _Rate:
    with localcontext(_CACHED):
        return _Rate.of(max(ONE / Decimal(leverage), base_imr), imr_factor)


def _power(notional: Decimal) -> Decimal:
    """``notional ** Decimal("0.8")`` (a positive ``notional``), about 25 times faster: the
    float power corrected in Decimal.

    With ``y`` the float result and ``u = notional^4 / y^5 - 1`` (about 1e-16),
    ``notional^0.8 = y * (1 + u)^(1/5) = y * (1 + u/5 - 2u^2/25 + O(u^3))``: computed with
    ``_WIDE``'s digits and rounded once, in the caller's context, its error is about 1e-48,
    so it is the Decimal power correctly rounded (as the Decimal power itself almost
    always is) unless the true value lies within about 1e-20 of a unit in the last place
    from a rounding tie. The Decimal power itself is taken where the float cannot serve:
    out of its range, or for a context wider than the correction."""
    if getcontext().prec > _FAST_PREC:
        return notional**_EXPONENT
    guess = float(notional) ** 0.8
    if not 1e-280 < guess < 1e280:
        return notional**_EXPONENT
    mul = _WIDE.multiply
    y = Decimal(repr(guess))
    squared = mul(notional, notional)
    y2 = mul(y, y)
    u = _WIDE.subtract(_WIDE.divide(mul(squared, squared), mul(mul(y2, y2), y)), ONE)
    if abs(u) > _MAX_FLOAT_ERROR:  # never with IEEE floats; the Decimal power if it were
        return notional**_EXPONENT
    return y * _WIDE.add(ONE, mul(u, _WIDE.subtract(_FIFTH, mul(_SECOND_ORDER, u))))


_WIDE = Context(prec=64)  # the correction's digits, well beyond its 1e-48
_FAST_PREC = 34  # the widest caller's context it serves (Decimal's default is 28 digits)
_MAX_FLOAT_ERROR = Decimal("1e-14")
_FIFTH, _SECOND_ORDER = Decimal("0.2"), Decimal("0.08")
_GROWTH = Decimal("1.8")  # d(N*mmr)/dN = 1.8*mmr where mmr grows as N^0.8


@dataclass(frozen=True, slots=True)
class _Curve:
    """What a symbol's maintenance rules fix once: the MMR and, where it grows (the flat
    part ends at ``mmr.start``), the peak of a long's surplus (where MMR reaches 1/1.8)
    with the maintenance margin there; the floats the root finder starts from."""

    mmr: _Rate
    peak: Decimal | None
    peak_maintenance: Decimal | None
    factor_fifth: Decimal  # mmr.factor ** 5, to 64 digits
    base_f: float
    slope_f: float


@lru_cache(maxsize=1024)
def _curve(base_imr: Decimal, base_mmr: Decimal, imr_factor: Decimal) -> _Curve:
    with localcontext(_CACHED):
        return _curve_of(base_imr, base_mmr, imr_factor)


def _curve_of(base_imr: Decimal, base_mmr: Decimal, imr_factor: Decimal) -> _Curve:
    rate = _Rate.of(base_mmr, base_mmr / base_imr * imr_factor)
    floats = float(base_mmr), float(rate.factor)
    fifth = _WIDE.power(rate.factor, 5)
    if rate.start is None:
        return _Curve(rate, None, None, fifth, *floats)
    peak = _Rate.of(ONE / _GROWTH, rate.factor).start
    assert peak is not None  # the factor is positive
    return _Curve(rate, peak, peak * rate.at(peak), fifth, *floats)


def _solve(
    curve: _Curve, k: Decimal, *, rising: bool, low: Decimal, high: Decimal, start: Decimal
) -> Decimal:
    """The notional in [low, high] where the surplus ``k +- N - N*mmr(N)`` (``+`` for a
    long, whose surplus rises there; ``-`` for a short, whose surplus falls) crosses zero,
    bracketed to 1e-12 of its value. The result is the bracket end on the mark's side of
    the root: ``high`` for a rising surplus (a long: liquidation at or below it), ``low``
    for a falling one (a short). The callers know ``low`` and ``high`` to be on either
    side of the root.

    The root is found in floats (``_float_root``), then bracketed in Decimal: the signs of
    the surplus 4e-13 either side of the float root decide, exactly, without a Decimal power
    (``negative``). Where the floats were further off (a surplus nearly flat at its root),
    Newton in Decimal goes on inside the bracket known so far, bisecting when a step would
    leave it."""
    sign = ONE if rising else -ONE
    mmr = curve.mmr

    def surplus(notional: Decimal) -> tuple[Decimal, Decimal]:
        """The surplus and the maintenance ratio at ``notional``."""
        ratio = mmr.at(notional)
        return k + sign * notional - notional * ratio, ratio

    def negative(notional: Decimal) -> bool:
        """Whether the surplus is negative at ``notional``. Where MMR grows it is
        ``k +- N - factor * N^1.8``: negative when ``k +- N`` is, or else when
        ``(k +- N)^5 < factor^5 * N^9``, both sides to 64 digits (far closer than the
        1e-12 from the root where this is asked)."""
        if mmr.start is None or notional <= mmr.start:
            return surplus(notional)[0] < 0
        excess = _WIDE.add(k, sign * notional)
        if excess <= 0:
            return True
        mul = _WIDE.multiply
        squared, excess_squared = mul(notional, notional), mul(excess, excess)
        fourth = mul(squared, squared)
        return mul(mul(excess_squared, excess_squared), excess) < mul(
            curve.factor_fifth, mul(mul(fourth, fourth), notional)
        )

    def below(value: Decimal) -> bool:
        """Whether a surplus is on ``low``'s side of the root."""
        return (value < 0) == rising

    guess = _float_root(
        curve, float(k), 1.0 if rising else -1.0, float(low), float(high), float(start)
    )
    if guess is not None and low < guess < high:
        near_low, near_high = max(low, guess * _BELOW), min(high, guess * _ABOVE)
        low_holds = near_low == low or negative(near_low) == rising
        high_holds = near_high == high or negative(near_high) != rising
        if low_holds and high_holds:
            return near_high if rising else near_low
        # The floats missed: keep what the two signs showed, unless rounding noise on a
        # nearly flat surplus made them contradict each other.
        narrowed = (
            near_low if low_holds else (near_high if not high_holds else low),
            near_high if high_holds else (near_low if not low_holds else high),
        )
        if narrowed[0] < narrowed[1]:
            low, high = narrowed
        start = (low + high) / 2
    x = start
    for _ in range(_SOLVER_STEPS):
        value, ratio = surplus(x)
        if below(value):
            low = x
        else:
            high = x
        tolerance = high * _RELATIVE_TOLERANCE
        if high - low <= tolerance:
            break
        # N*mmr(N) grows as 1.8*mmr where mmr grows as N^0.8, as mmr where it is flat
        slope = sign - (ratio * _GROWTH if ratio > mmr.floor else ratio)
        following = x - value / slope if slope != 0 else x
        if abs(following - x) <= tolerance / 2:
            # Converged from one side: probe just past it to close the bracket.
            following = x + tolerance / 2 if x == low else x - tolerance / 2
        if not low < following < high:
            following = (low + high) / 2
        x = following
    return high if rising else low


_BELOW = ONE - Decimal("4e-13")
_ABOVE = ONE + Decimal("4e-13")


def _float_root(
    curve: _Curve, k: float, sign: float, low: float, high: float, x: float
) -> Decimal | None:
    """Newton in floats on the surplus ``k + sign*N - N*mmr(N)`` from ``x``, kept inside
    (low, high): a root to about 1e-15 (``_solve`` checks it), or ``None`` out of the
    floats' range."""
    if not (math.isfinite(k) and math.isfinite(low) and math.isfinite(high)):
        return None
    base, slope = curve.base_f, curve.slope_f
    for _ in range(60):
        ratio = slope * x**0.8
        if ratio > base:
            value, derivative = k + sign * x - x * ratio, sign - 1.8 * ratio
        else:
            value, derivative = k + sign * x - x * base, sign - base
        following = x - value / derivative if derivative else (low + high) / 2
        if not low < following < high:  # outside, or NaN
            following = (low + high) / 2
        if abs(following - x) <= 1e-9 * abs(x):
            # converging quadratically: the step just taken leaves about its square
            return Decimal(repr(following))
        x = following
    return Decimal(repr(x))
