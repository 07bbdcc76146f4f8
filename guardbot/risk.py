"""The margin math of isolated positions: pure functions, ``Decimal`` in and out.

Everything follows orderly-api.md §7 (the js-sdk's formulas; the server's are unconfirmed)
and design.md "Risk math". For an isolated position with margin ``M``, signed quantity ``q``,
signed cost ``C``, funding owed ``F = q*(sum_unitary_funding - last_sum_unitary_funding)`` and
price ``P``::

    equity(P)  = M + q*P - C - F
    liquidated when equity(P) <= |q|*P*MMR(|q|*P)

``MMR`` grows with notional (``imr_factor * notional^0.8``), so the liquidation price is
solved exactly where ``MMR`` is flat (``base_mmr``) and by bisection where it is not. The
inverse problem (the margin that puts the liquidation price at a given price) is explicit.

A ``Position`` carries ``unsettled_pnl = q*mark - C - F`` but not the current
``sum_unitary_funding``, so ``F`` is recovered from the snapshot itself
(``funding_owed``); re-pricing at another mark keeps ``F`` unchanged.

The simulated exchange has its own implementation of this math and never imports this
module (design.md): each side checks the other.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from guardbot.domain import ZERO, MarginMode, Position, SymbolRules

ONE = Decimal(1)
MARGIN_STEP = Decimal("0.01")
"""``position_margin`` amounts are sent with 2 decimals (orderly-api.md §4: the UI's precision)."""

_EXPONENT = Decimal("0.8")  # notional^(4/5), orderly-api.md §7
_BISECTION_STEPS = 200
_RELATIVE_TOLERANCE = Decimal("1e-20")


def imr(notional: Decimal, leverage: int, rules: SymbolRules) -> Decimal:
    """Initial margin ratio: ``max(1/leverage, base_imr, imr_factor * notional^0.8)``.

    ``leverage`` is the position's own (symbol, margin mode) leverage, as the js-sdk uses it.
    """
    if leverage <= 0:
        raise ValueError(f"leverage must be positive, got {leverage}")
    return max(ONE / Decimal(leverage), rules.base_imr, rules.imr_factor * _power(notional))


def mmr(notional: Decimal, rules: SymbolRules) -> Decimal:
    """Maintenance margin ratio:
    ``max(base_mmr, (base_mmr/base_imr) * imr_factor * notional^0.8)``."""
    return max(rules.base_mmr, _mmr_slope(rules) * _power(notional))


def funding_owed(position: Position) -> Decimal:
    """``q*(sum_unitary_funding - last_sum_unitary_funding)``, recovered from the snapshot's
    ``unsettled_pnl = q*mark - cost - funding`` (orderly-api.md §7, PnL)."""
    return position.qty * position.mark_price - position.cost_position - position.unsettled_pnl


def liquidation_price(position: Position, rules: SymbolRules) -> Decimal | None:
    """The mark price at which the isolated position is liquidated, or ``None`` when no
    positive price liquidates it (a long whose margin covers its whole cost, or a closed
    position).

    A long liquidates at or below the returned price, a short at or above it. If a long is
    liquidatable at every price (a maintenance ratio so high that the notional outgrows the
    equity, far beyond any leverage the exchange allows), the result is the higher of the
    best-case price and the mark, so its distance is never reported as safe. Bisection
    results are rounded toward the mark (the conservative side).

    Raises ``ValueError`` for a cross position: its risk is the account's, not its own.
    """
    if position.margin_mode is not MarginMode.ISOLATED:
        raise ValueError(f"{position.symbol} is a cross position; its liquidation is account-wide")
    qty = position.qty
    if qty == 0:
        return None
    size = abs(qty)
    # equity(P) - maintenance(P) as a function of the notional N = |q|*P:
    #   long:  k + N - N*mmr(N)      short: k - N - N*mmr(N)
    k = position.margin - position.cost_position - funding_owed(position)
    sign = ONE if qty > 0 else -ONE

    def surplus(notional: Decimal) -> Decimal:
        return k + sign * notional - notional * mmr(notional, rules)

    flat_end = _flat_end(rules)
    if qty > 0:
        if k >= 0:
            return None
        flat_root = -k / (ONE - rules.base_mmr)
        if flat_end is None or flat_root <= flat_end:
            return flat_root / size
        # Beyond the flat part the surplus rises until mmr reaches 1/1.8, then falls.
        peak = (ONE / (Decimal("1.8") * _mmr_slope(rules))) ** Decimal("1.25")
        if surplus(peak) <= 0:
            return max(peak / size, position.mark_price)
        root = _bisect(surplus, min(flat_end, peak), peak, rising=True)
        return root / size
    if k <= 0:
        # Equity is negative at every price: liquidatable now, whatever the mark.
        return ZERO
    flat_root = k / (ONE + rules.base_mmr)
    if flat_end is None or flat_root <= flat_end:
        return flat_root / size
    # surplus(flat_end) > 0 and surplus(k) = -k*mmr(k) < 0; strictly falling in between.
    root = _bisect(surplus, flat_end, k, rising=False)
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
    """``notional / (margin + unsettled_pnl)`` (orderly-api.md §7); ``None`` when the equity
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
    """The most margin a REDUCE may take (js-sdk rule, orderly-api.md §7):
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


def _power(notional: Decimal) -> Decimal:
    if notional <= 0:
        return ZERO
    return notional**_EXPONENT


def _mmr_slope(rules: SymbolRules) -> Decimal:
    if rules.base_imr <= 0:
        raise ValueError(f"{rules.symbol}: base_imr must be positive, got {rules.base_imr}")
    return rules.base_mmr / rules.base_imr * rules.imr_factor


def _flat_end(rules: SymbolRules) -> Decimal | None:
    """The notional up to which MMR is ``base_mmr``; ``None`` if it never grows."""
    slope = _mmr_slope(rules)
    if slope <= 0:
        return None
    return (rules.base_mmr / slope) ** Decimal("1.25")


def _bisect(
    surplus: Callable[[Decimal], Decimal], low: Decimal, high: Decimal, *, rising: bool
) -> Decimal:
    """The notional where ``surplus`` crosses zero in [low, high], rounded toward the
    mark: the safe side is above the root for a rising surplus (a long: return ``high``),
    below it for a falling one (a short: return ``low``)."""
    for _ in range(_BISECTION_STEPS):
        if high - low <= high * _RELATIVE_TOLERANCE:
            break
        middle = (low + high) / 2
        value = surplus(middle)
        if (value < 0) == rising:
            low = middle
        else:
            high = middle
    return high if rising else low
