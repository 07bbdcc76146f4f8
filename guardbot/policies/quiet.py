"""The mark band: the mark prices at which none of a position's policies can act.

Policies promise the distances at which they never act (``acts_below``, ``acts_above``:
base.py). For one version of a position (its margin, quantity, cost and funding as the
exchange confirmed them) those distances map to mark prices, because the liquidation price
does not move with the mark (``guardbot.risk``: it solves
``equity(P) = |q|*P*MMR(|q|*P)`` over every price ``P`` at once, so MMR's growth with
notional is in the curve, not in the mark; the funding owed, recovered from the snapshot,
is kept unchanged by re-pricing, ``guardbot.book``). With ``L`` that price the signed
distance at mark ``m`` is ``1 - L/m`` for a long (rising with the mark) and ``L/m - 1`` for
a short (falling), so "distance in [a, b]" is "mark in [L/(1-b'), ...]": two divisions per
bound, once per version, and then a tick costs a comparison.

Conservative by construction:

- every distance bound is tightened by ``SLACK`` (1e-9) before it becomes a price. The
  distance a policy sees at mark ``m`` differs from ``1 - L/m`` only by the solver's
  tolerance on ``L`` (``risk.DISTANCE_TOLERANCE``, 1e-12 relative; near a bound ``L/m`` is
  below 3, so a few 1e-12 of distance) and Decimal rounding (28 digits), both far inside
  the slack; so a mark inside the band is inside it for the policies too;
- the band excludes the slack around the distance the guard polls fast below (``watch``),
  so the urgency of a position in its band is the urgency its evaluation would find;
- a long whose liquidation price is at or above the confirmed mark gets no band: past
  liquidation, and in the one case where ``risk.liquidation_price`` returns the mark itself
  (a long liquidatable at every price), the price would move with the mark;
- no band either when the view cannot be built (the evaluation reports why), or when a
  policy of the position declares nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from guardbot.policies.base import PositionView, Quiet

ZERO, ONE = Decimal(0), Decimal(1)
INFINITY = Decimal("Infinity")
SLACK = Decimal("1e-9")
"""Distance given up at every bound of the band, far above the risk math's own error."""
_EMPTY = (INFINITY, ZERO)


Speeds = tuple[tuple[Decimal, Decimal], ...]


@dataclass(frozen=True, slots=True)
class Cell:
    """Marks from ``low`` to ``high`` (both included) at which the position needs nothing;
    ``near``: it is near its trigger there (polled fast); ``speeds``: the cell holds only
    while the mark is calm (``Quiet.calm``)."""

    low: Decimal
    high: Decimal
    near: bool
    speeds: Speeds = ()


@dataclass(frozen=True, slots=True)
class MarkBand:
    """The marks at which no policy of a position acts, for one version of it: ``calm``
    ones (distance at or above the guard's watch) and ``near`` ones (below it), each a
    closed interval, empty when its low end is above its high end."""

    calm_low: Decimal
    calm_high: Decimal
    near_low: Decimal
    near_high: Decimal
    # the band holds only while the mark moves slower than these (``Quiet.calm``)
    speeds: Speeds = ()

    def cell(self, mark: Decimal) -> Cell | None:
        """The part of the band (calm or near) that holds ``mark``; ``None`` when some
        policy may act there: the position must be evaluated."""
        if self.calm_low <= mark <= self.calm_high:
            return Cell(self.calm_low, self.calm_high, False, self.speeds)
        if self.near_low <= mark <= self.near_high:
            return Cell(self.near_low, self.near_high, True, self.speeds)
        return None

    def urgency(self, mark: Decimal) -> bool | None:
        """Whether the position is near (below the watch) at ``mark``; ``None`` when some
        policy may act there: the position must be evaluated."""
        cell = self.cell(mark)
        return None if cell is None else cell.near


def mark_band(view: PositionView, quiet: Quiet, watch: Decimal) -> MarkBand | None:
    """The band of ``view``'s position version, where its policies promise ``quiet`` and a
    distance below ``watch`` is urgent; ``None`` if there is none to trust."""
    liquidation = view.liquidation_price
    qty = view.position.qty
    if liquidation is None:
        # No liquidation price at any mark (margin covers the cost): infinitely far.
        if quiet.high is not None:
            return None
        return MarkBand(ZERO, INFINITY, *_EMPTY, quiet.calm)
    if qty > 0 and liquidation >= view.position.mark_price:
        return None
    low = None if quiet.low is None else quiet.low + SLACK
    high = None if quiet.high is None else quiet.high - SLACK
    calm_from = watch + SLACK if low is None else max(low, watch + SLACK)
    near_to = watch - SLACK if high is None else min(high, watch - SLACK)
    calm = _marks(liquidation, qty, calm_from, high)
    near = _marks(liquidation, qty, low, near_to)
    if _empty(calm) and _empty(near):
        return None
    return MarkBand(*calm, *near, quiet.calm)


def _empty(marks: tuple[Decimal, Decimal]) -> bool:
    """Whether no mark (a positive price) is in the interval."""
    return marks[0] > marks[1] or marks[1] <= 0


def _marks(
    liquidation: Decimal, qty: Decimal, low: Decimal | None, high: Decimal | None
) -> tuple[Decimal, Decimal]:
    """The marks at which the signed distance is in [low, high] (``None``: open), as
    (lowest, highest), empty if low > high."""
    if low is not None and high is not None and low > high:
        return _EMPTY
    if qty > 0:  # distance = 1 - L/m: at least d from L/(1-d), at most d up to L/(1-d)
        lowest = ZERO if low is None else (liquidation / (ONE - low) if low < ONE else INFINITY)
        highest = INFINITY if high is None or high >= ONE else liquidation / (ONE - high)
    else:  # distance = L/m - 1: at least d up to L/(1+d), at most d from L/(1+d)
        lowest = ZERO if high is None else (
            liquidation / (ONE + high) if high > -ONE else INFINITY)
        highest = INFINITY if low is None or low <= -ONE else liquidation / (ONE + low)
    return lowest, highest
