"""The margin math of isolated positions: pure functions, ``Decimal`` in and out.

Everything follows docs/exchange.md §7 (the js-sdk's formulas; the server's are unconfirmed)
and docs/architecture.md, "Risk math". For an isolated position with margin ``M``, signed
quantity ``q``, signed cost ``C``, funding owed
``F = q*(sum_unitary_funding - last_sum_unitary_funding)`` and price ``P``::

    equity(P)  = M + q*P - C - F
    liquidated when equity(P) <= |q|*P*MMR(|q|*P)

``MMR`` grows with notional (``imr_factor * notional^0.8``), so the liquidation price is
solved exactly where ``MMR`` is flat (``base_mmr``) and numerically (bracketed Newton) where
it is not. The inverse problem (the margin that puts the liquidation price at a given
price) is explicit.

A ``Position`` carries ``unsettled_pnl = q*mark - C - F`` but not the current
``sum_unitary_funding``, so ``F`` is recovered from the snapshot itself
(``funding_owed``); re-pricing at another mark keeps ``F`` unchanged.

The simulated exchange has its own implementation of this math and never imports this
module (docs/architecture.md, "Risk math"): each side checks the other.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
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
    return _rate(max(ONE / Decimal(leverage), rules.base_imr), rules.imr_factor, notional)


def mmr(notional: Decimal, rules: SymbolRules) -> Decimal:
    """Maintenance margin ratio:
    ``max(base_mmr, (base_mmr/base_imr) * imr_factor * notional^0.8)``."""
    return _rate(rules.base_mmr, _mmr_slope(rules), notional)


def funding_owed(position: Position) -> Decimal:
    """``q*(sum_unitary_funding - last_sum_unitary_funding)``, recovered from the snapshot's
    ``unsettled_pnl = q*mark - cost - funding`` (docs/exchange.md §7, PnL)."""
    return position.qty * position.mark_price - position.cost_position - position.unsettled_pnl


def liquidation_price(position: Position, rules: SymbolRules) -> Decimal | None:
    """The mark price at which the isolated position is liquidated, or ``None`` when no
    positive price liquidates it (a long whose margin covers its whole cost, or a closed
    position).

    A long liquidates at or below the returned price, a short at or above it. If a long is
    liquidatable at every price (a maintenance ratio so high that the notional outgrows the
    equity, far beyond any leverage the exchange allows), the result is the higher of the
    best-case price and the mark, so its distance is never reported as safe. Numerical
    results are rounded toward the mark (the conservative side).

    Raises ``ValueError`` for a cross position: its risk is the account's, not its own.
    """
    if position.margin_mode is not MarginMode.ISOLATED:
        raise ValueError(f"{position.symbol} is a cross position; its liquidation is account-wide")
    if not (ZERO <= rules.base_mmr < ONE and rules.base_imr > 0 and rules.imr_factor >= 0):
        raise ValueError(
            f"{rules.symbol}: implausible margin rules base_imr={rules.base_imr} "
            f"base_mmr={rules.base_mmr} imr_factor={rules.imr_factor}"
        )
    qty = position.qty
    if qty == 0:
        return None
    size = abs(qty)
    # equity(P) - maintenance(P) as a function of the notional N = |q|*P:
    #   long:  k + N - N*mmr(N)      short: k - N - N*mmr(N)
    k = position.margin - position.cost_position - funding_owed(position)
    sign = ONE if qty > 0 else -ONE

    def surplus(notional: Decimal) -> tuple[Decimal, Decimal]:
        """The surplus and its derivative in N (``N*mmr(N)`` grows as ``1.8*mmr`` where
        mmr grows as ``N^0.8``, as ``mmr`` where it is flat)."""
        ratio = mmr(notional, rules)
        growth = ratio * Decimal("1.8") if ratio > rules.base_mmr else ratio
        return k + sign * notional - notional * ratio, sign - growth

    # The same curve in floats, only to pick the solver's starting point (``_solve``): every
    # branch and every result is decided in Decimal, so float error can cost a Newton step,
    # never a wrong price.
    k_f, sign_f, slope_f = float(k), float(sign), float(_mmr_slope(rules))
    base_f = float(rules.base_mmr)

    def surplus_hint(notional: float) -> tuple[float, float]:
        ratio = max(base_f, slope_f * notional**0.8)
        growth = ratio * 1.8 if ratio > base_f else ratio
        return k_f + sign_f * notional - notional * ratio, sign_f - growth

    flat_end = _flat_end(rules)
    if qty > 0:
        if k >= 0:
            return None
        flat_root = -k / (ONE - rules.base_mmr)
        if flat_end is None or flat_root <= flat_end:
            return flat_root / size
        # Beyond the flat part the surplus rises until mmr reaches 1/1.8, then falls.
        peak = _growth_start(ONE / Decimal("1.8"), _mmr_slope(rules))
        assert peak is not None  # flat_end is not None: mmr grows
        if surplus(peak)[0] <= 0:
            return max(peak / size, position.mark_price)
        low = min(flat_end, peak)
        start = min(max(flat_root, low), peak)
        root = _solve(surplus, surplus_hint, low, peak, start=start, rising=True)
        return root / size
    if k <= 0:
        # Equity is negative at every price: liquidatable now, whatever the mark.
        return ZERO
    flat_root = k / (ONE + rules.base_mmr)
    if flat_end is None or flat_root <= flat_end:
        return flat_root / size
    # surplus(flat_end) > 0 and surplus(k) = -k*mmr(k) < 0; strictly falling in between.
    root = _solve(surplus, surplus_hint, flat_end, k, start=flat_end, rising=False)
    return root / size


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
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")
    # quantize: the result carries the step's decimals ("50.00"), as sent on the wire
    return ((amount / step).to_integral_value(rounding=rounding) * step).quantize(step)


def _rate(floor: Decimal, factor: Decimal, notional: Decimal) -> Decimal:
    """``max(floor, factor * notional^0.8)``, skipping the (slow) Decimal power below the
    notional where the second term takes over."""
    start = _growth_start(floor, factor)
    if start is None or notional <= start:
        return floor
    return max(floor, factor * notional**_EXPONENT)


@lru_cache(maxsize=1024)
def _growth_start(floor: Decimal, factor: Decimal) -> Decimal | None:
    """The notional where ``factor * N^0.8`` reaches ``floor``; ``None`` if it never does."""
    if factor <= 0:
        return None
    return (floor / factor) ** Decimal("1.25")


def _mmr_slope(rules: SymbolRules) -> Decimal:
    if rules.base_imr <= 0:
        raise ValueError(f"{rules.symbol}: base_imr must be positive, got {rules.base_imr}")
    return rules.base_mmr / rules.base_imr * rules.imr_factor


def _flat_end(rules: SymbolRules) -> Decimal | None:
    """The notional up to which MMR is ``base_mmr``; ``None`` if it never grows."""
    return _growth_start(rules.base_mmr, _mmr_slope(rules))


def _solve(
    surplus: Callable[[Decimal], tuple[Decimal, Decimal]],
    surplus_hint: Callable[[float], tuple[float, float]],
    low: Decimal,
    high: Decimal,
    *,
    start: Decimal,
    rising: bool,
) -> Decimal:
    """The notional in [low, high] where ``surplus`` crosses zero: Newton's method kept
    inside a shrinking bracket (bisection when a step would leave it), started from where
    the same curve in floats (``surplus_hint``) crosses zero. That takes about three
    Decimal evaluations (each a Decimal power) instead of the ~75 of plain bisection; the
    floats only choose the starting point, the answer is the Decimal bracket's.

    The result is the bracket end on the mark's side of the root: ``high`` for a rising
    surplus (a long: liquidation at or below it), ``low`` for a falling one (a short).
    """
    x = _float_hint(surplus_hint, low, high, start)
    for _ in range(_SOLVER_STEPS):
        value, slope = surplus(x)
        if (value < 0) == rising:
            low = x
        else:
            high = x
        tolerance = high * _RELATIVE_TOLERANCE
        if high - low <= tolerance:
            break
        following = x - value / slope if slope != 0 else x
        if abs(following - x) <= tolerance / 2:
            # Converged from one side: probe just past it to close the bracket.
            following = x + tolerance / 2 if x == low else x - tolerance / 2
        if not low < following < high:
            following = (low + high) / 2
        x = following
    return high if rising else low


def _float_hint(
    surplus: Callable[[float], tuple[float, float]], low: Decimal, high: Decimal, start: Decimal
) -> Decimal:
    """Newton in floats from ``start``, kept inside (low, high); ``start`` if that fails."""
    lo, hi, x = float(low), float(high), float(start)
    for _ in range(60):
        value, slope = surplus(x)
        following = x - value / slope if slope != 0 else (lo + hi) / 2
        if not lo < following < hi or following != following:  # outside, or NaN
            following = (lo + hi) / 2
        if abs(following - x) <= 1e-15 * abs(x):
            x = following
            break
        x = following
    guess = Decimal(x)
    return guess if low < guess < high else start
