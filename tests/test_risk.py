"""Risk math: hand-computed cases from docs/exchange.md §7 plus property tests."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D
from decimal import localcontext

import pytest
from factories import ALT_RULES as FLAT
from factories import LONG, SHORT
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from guardbot import risk
from guardbot.domain import MarginMode, Position, SymbolRules
from guardbot.sim import margin as sim_margin

# Alts in the docs: base_imr 0.10, base_mmr 0.05; no notional growth here (factories.py).
# MMR = max(0.005, 0.5 * 2e-6 * N^0.8): 0.01 at N = 1e5 (N^0.8 = 1e4); flat up to N ≈ 42045.
GROWING = SymbolRules(
    "PERP_ETH_USDC", base_imr=D("0.01"), base_mmr=D("0.005"), imr_factor=D("0.000002")
)

def test_rates() -> None:
    assert risk.imr(D(100_000), 10, GROWING) == D("0.1")
    assert risk.imr(D(100_000), 100, GROWING) == D("0.02")
    assert risk.imr(D(0), 100, GROWING) == D("0.01")
    assert risk.mmr(D(100_000), GROWING) == D("0.01")
    assert risk.mmr(D(1_000), GROWING) == D("0.005")
    assert risk.mmr(D(10**9), FLAT) == D("0.05")
    with pytest.raises(ValueError, match="leverage"):
        risk.imr(D(1), 0, FLAT)


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        # js-sdk: (margin - cost - funding) / (|q|*MMR - q) = -800 / -9.5
        (LONG, D(800) / D("9.5")),
        # (200 + 1000) / (0.5 + 10)
        (SHORT, D(1200) / D("10.5")),
        # funding owed 5 (q * Δsum_unitary_funding = 10 * 0.5) shows as unsettled pnl -5
        (replace(LONG, unsettled_pnl=D(-5)), D(805) / D("9.5")),
        # margin covers the whole cost: no price liquidates the long
        (replace(LONG, margin=D(1000)), None),
        (replace(LONG, qty=D(0)), None),
    ],
)
def test_liquidation_price_flat(position: Position, expected: D | None) -> None:
    assert risk.liquidation_price(position, FLAT) == expected


def test_liquidation_price_where_mmr_grows() -> None:
    # Long 10 at mark 12000, cost 120000: liquidation at P = 10000 (N = 1e5, MMR 0.01)
    # when margin - cost = -N + N*0.01 = -99000, i.e. margin 21000.
    long = replace(
        LONG, symbol="PERP_ETH_USDC", mark_price=D(12000), cost_position=D(120000),
        margin=D(21000),
    )
    assert risk.liquidation_price(long, GROWING) == pytest.approx(D(10000), rel=D("1e-12"))
    # Short -10 at mark 8000, cost -80000: margin + 80000 = N + N*0.01 = 101000.
    short = replace(long, qty=D(-10), mark_price=D(8000), cost_position=D(-80000))
    assert risk.liquidation_price(short, GROWING) == pytest.approx(D(10000), rel=D("1e-12"))


def test_a_long_no_price_can_save_is_never_reported_safe() -> None:
    # MMR = 1e-6 * N^0.8 beyond the flat part: the surplus k + N - N*MMR peaks where
    # MMR = 1/1.8, at N = (1/1.8e-6)^1.25 ≈ 1.5e7, and is still negative there when
    # margin - cost = -1e7.
    long = replace(
        LONG, qty=D(1000), mark_price=D(10000), cost_position=D(10**7), margin=D(0),
        unsettled_pnl=D(0),
    )
    peak = (1 / (D("1.8") * D("0.000001"))) ** D("1.25")
    price = risk.liquidation_price(long, GROWING)
    assert price == peak / 1000
    distance = risk.liquidation_distance(long.mark_price, price, long.qty)
    assert distance is not None and distance < 0
    # with the mark above that peak price, the liquidation price is the mark: distance 0
    above = replace(long, mark_price=D(20000), unsettled_pnl=D(10**7))
    assert risk.liquidation_price(above, GROWING) == D(20000)


def test_numerical_solutions_round_toward_the_mark() -> None:
    long = replace(
        LONG, mark_price=D(12000), cost_position=D(120000), margin=D(21000) + D("0.001")
    )
    short = replace(long, qty=D(-10), mark_price=D(8000), cost_position=D(-80000))

    def surplus(position: Position, price: D) -> D:
        notional = abs(position.qty) * price
        equity = position.margin + position.qty * price - position.cost_position
        return equity - notional * risk.mmr(notional, GROWING)

    for position, toward_mark in ((long, D(1)), (short, D(-1))):
        price = risk.liquidation_price(position, GROWING)
        assert price is not None
        # the true root lies within 1e-12 of the answer, on the side away from the mark
        assert surplus(position, price) >= 0
        assert surplus(position, price * (1 - toward_mark * D("1e-12"))) < 0


@pytest.mark.parametrize(
    "rules",
    [
        replace(FLAT, base_mmr=D(1)),
        replace(FLAT, base_mmr=D(-1)),
        replace(FLAT, base_imr=D(0)),
        replace(FLAT, imr_factor=D(-1)),
    ],
)
def test_implausible_rules_are_refused(rules: SymbolRules) -> None:
    with pytest.raises(ValueError, match="implausible margin rules"):
        risk.liquidation_price(LONG, rules)


def test_cross_positions_are_refused() -> None:
    with pytest.raises(ValueError, match="cross"):
        risk.liquidation_price(replace(LONG, margin_mode=MarginMode.CROSS), FLAT)


def test_liquidation_distance() -> None:
    assert risk.liquidation_distance(D(100), D(80)) == D("0.2")
    assert risk.liquidation_distance(D(100), D(120)) == D("0.2")
    assert risk.liquidation_distance(D(100), None) is None
    # signed: a long whose mark is already below its liquidation price
    assert risk.liquidation_distance(D(80), D(100), D(1)) == D("-0.25")
    assert risk.liquidation_distance(D(120), D(100), D(-1)) == D(-20) / D(120)
    assert risk.liquidation_distance(D(100), D(80), D(1)) == D("0.2")
    with pytest.raises(ValueError, match="mark"):
        risk.liquidation_distance(D(0), D(1))


def test_effective_leverage() -> None:
    assert risk.effective_leverage(LONG) == D(5)
    assert risk.effective_leverage(replace(LONG, unsettled_pnl=D(-100))) == D(10)
    assert risk.effective_leverage(replace(LONG, unsettled_pnl=D(-200))) is None


@pytest.mark.parametrize(
    ("position", "distance", "expected"),
    [
        # P_L = 80: 10*80*0.05 - 800 + 1000
        (LONG, D("0.2"), D(240)),
        # P_L = 120: 10*120*0.05 + 1200 - 1000
        (SHORT, D("0.2"), D(260)),
        # funding owed 5 needs 5 more
        (replace(LONG, unsettled_pnl=D(-5)), D("0.2"), D(245)),
        # at distance 0 the margin is exactly the maintenance margin plus the loss
        (replace(LONG, cost_position=D(1100), unsettled_pnl=D(-100)), D(0), D(150)),
        # a long that needs no margin at all for the target
        (replace(LONG, cost_position=D(10), unsettled_pnl=D(990)), D("0.5"), D(0)),
    ],
)
def test_margin_for_distance(position: Position, distance: D, expected: D) -> None:
    assert risk.margin_for_distance(position, FLAT, distance) == expected


def test_margin_for_distance_round_trips_exactly_where_flat() -> None:
    margin = risk.margin_for_distance(LONG, FLAT, D("0.2"))
    assert risk.liquidation_price(replace(LONG, margin=margin), FLAT) == D(80)


def test_margin_for_distance_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="distance"):
        risk.margin_for_distance(LONG, FLAT, D(1))
    with pytest.raises(ValueError, match="no position"):
        risk.margin_for_distance(replace(LONG, qty=D(0)), FLAT, D("0.1"))


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        (LONG, D(100)),  # 200 - 1000*0.1
        (replace(LONG, unsettled_pnl=D(-30)), D(70)),  # a loss lowers it
        (replace(LONG, unsettled_pnl=D(50)), D(100)),  # profit cannot be withdrawn
        (replace(LONG, margin=D(90)), D(0)),
        (replace(LONG, leverage=20), D(100)),  # IMR = max(1/20, base_imr 0.1)
        (replace(LONG, leverage=5), D(0)),  # IMR = 1/5: 200 - 1000*0.2
    ],
)
def test_max_removable(position: Position, expected: D) -> None:
    assert risk.max_removable(position, FLAT) == expected


@pytest.mark.parametrize(
    ("amount", "up", "down"),
    [
        (D("1.001"), D("1.01"), D("1.00")),
        (D("1.00"), D("1.00"), D("1.00")),
        (D("0.009"), D("0.01"), D("0.00")),
        (D("-1.005"), D("-1.00"), D("-1.01")),
    ],
)
def test_rounding(amount: D, up: D, down: D) -> None:
    assert risk.round_up(amount) == up
    assert risk.round_down(amount) == down


def test_rounding_to_other_steps() -> None:
    assert risk.round_up(D("12.3"), D(5)) == D(15)
    with pytest.raises(ValueError, match="step"):
        risk.round_down(D(1), D(0))


# --- properties --------------------------------------------------------------------------

rules_st = st.builds(
    lambda base_imr, ratio, factor: SymbolRules(
        "PERP_X_USDC", base_imr=base_imr, base_mmr=base_imr * ratio, imr_factor=factor
    ),
    st.sampled_from([D("0.01"), D("0.02"), D("0.05"), D("0.1")]),
    st.sampled_from([D("0.3"), D("0.5"), D("0.6"), D("0.8")]),
    # from flat MMR to MMR growing from small notionals on (exaggerated on purpose)
    st.sampled_from([D(0), D("1e-5"), D("1e-4"), D("3e-4"), D("1e-3")]),
)
def _scaled(exponent: int, mantissa: D) -> D:
    """Log-uniform-ish magnitudes, so flat and growing MMR are both exercised."""
    return mantissa.scaleb(exponent)


positions_st = st.builds(
    lambda qty, short, mark, entry_move, funding, margin, leverage: replace(
        LONG,
        qty=-qty if short else qty,
        mark_price=mark,
        cost_position=(-qty if short else qty) * mark * (1 + entry_move),
        unsettled_pnl=(-qty if short else qty) * mark * -entry_move - funding,
        margin=margin,
        leverage=leverage,
    ),
    st.builds(_scaled, st.integers(-3, 2), st.decimals(1, 10, places=3)),
    st.booleans(),
    st.builds(_scaled, st.integers(0, 4), st.decimals(1, 10, places=2)),
    st.decimals(min_value=D("-0.3"), max_value=D("0.3"), places=3),
    st.decimals(min_value=-50, max_value=50, places=2),
    st.decimals(min_value=0, max_value=1_000_000, places=2),
    st.integers(min_value=1, max_value=50),
)


def _sane(position: Position, rules: SymbolRules, price: D) -> bool:
    """Within any leverage the exchange allows: MMR well below 1/1.8."""
    return risk.mmr(abs(position.qty) * price, rules) < D("0.4")


@settings(max_examples=300, deadline=None)
@given(positions_st, rules_st, st.decimals(min_value=D("0.001"), max_value=D("0.9"), places=3))
def test_margin_for_distance_then_liquidation_price_gives_the_distance(
    position: Position, rules: SymbolRules, distance: D
) -> None:
    target = risk.target_liquidation_price(position, distance)
    assume(_sane(position, rules, target) and _sane(position, rules, position.mark_price * 2))
    margin = risk.margin_for_distance(position, rules, distance)
    assume(margin > 0)
    price = risk.liquidation_price(replace(position, margin=margin), rules)
    assert price is not None
    found = risk.liquidation_distance(position.mark_price, price, position.qty)
    assert found == pytest.approx(distance, abs=D("1e-11"))


@settings(max_examples=300, deadline=None)
@given(positions_st, rules_st, st.decimals(min_value=0, max_value=100_000, places=2))
def test_adding_margin_never_moves_liquidation_toward_the_mark(
    position: Position, rules: SymbolRules, extra: D
) -> None:
    assume(_sane(position, rules, position.mark_price * 3))
    before = risk.liquidation_price(position, rules)
    after = risk.liquidation_price(replace(position, margin=position.margin + extra), rules)
    if position.qty > 0:
        # None (no liquidation price) is the safest a long can be
        assert after is None or (before is not None and after <= before)
    else:
        assert before is not None and after is not None and after >= before


@settings(max_examples=200, deadline=None)
@given(positions_st, rules_st)
def test_max_removable_is_within_the_margin(position: Position, rules: SymbolRules) -> None:
    removable = risk.max_removable(position, rules)
    assert D(0) <= removable <= position.margin


@given(
    st.decimals(min_value=-10**6, max_value=10**6, places=6),
    st.sampled_from([D("0.01"), D("0.1"), D(1), D(5)]),
)
def test_rounding_properties(amount: D, step: D) -> None:
    up, down = risk.round_up(amount, step), risk.round_down(amount, step)
    assert down <= amount <= up
    assert up - down in (D(0), step)
    assert up % step == 0 and down % step == 0
    assert up.as_tuple().exponent == down.as_tuple().exponent == step.as_tuple().exponent


# --- the simulated exchange's own implementation checks this one (docs/architecture.md) ---


@settings(max_examples=300, deadline=None)
@given(positions_st, st.sampled_from(sorted(sim_margin.MARKETS)))
def test_agrees_with_the_simulated_exchange(position: Position, symbol: str) -> None:
    market = sim_margin.MARKETS[symbol]
    rules = SymbolRules(symbol, market.base_imr, market.base_mmr, market.imr_factor)
    # the simulator charges no funding: unsettled pnl is q*mark - cost
    position = replace(
        position, unsettled_pnl=position.qty * position.mark_price - position.cost_position
    )
    assume(_sane(position, rules, position.mark_price * 3))
    ours = risk.liquidation_price(position, rules)
    theirs = sim_margin.isolated_liquidation_price(
        market, position.margin, position.qty, position.cost_position
    )
    if ours is None or theirs is None:
        assert ours == theirs
    else:
        assert ours == pytest.approx(theirs, rel=D("1e-12"))
    removable = sim_margin.isolated_max_reduce(
        market, position.margin, position.qty, position.cost_position, position.mark_price,
        position.leverage,
    )
    # the simulator books 6 decimals, rounded down
    assert removable <= risk.max_removable(position, rules) < removable + D("0.000001")


# --- the fast paths against the plain Decimal math (issue 12: the decision layer's speed) ---
#
# ``risk`` takes notional^0.8 as a corrected float power and finds liquidation roots in
# floats, bracketed in Decimal. The references below are the plain definitions: the
# Decimal power, and the root of the surplus by bisection with 80 digits.

notionals_st = st.builds(
    lambda mantissa, exponent: mantissa.scaleb(exponent),
    st.decimals(min_value=1, max_value=10, places=27, allow_nan=False, allow_infinity=False),
    st.integers(-8, 15),
)


@settings(max_examples=1000, deadline=None)
@given(notionals_st)
def test_the_fast_power_is_the_decimal_power(notional: D) -> None:
    assume(notional > 0)
    assert risk._power(notional) == notional ** D("0.8")


def test_the_fast_power_out_of_the_floats_range_and_in_wide_contexts() -> None:
    for notional in (D("1e-400"), D("3.3e-300"), D("1e400"), D(32), D(1), D("1e-20")):
        assert risk._power(notional) == notional ** D("0.8")
    with localcontext() as wide:
        wide.prec = 50
        notional = D("1234567.891011121314151617181920212223")
        assert risk._power(notional) == notional ** D("0.8")


@settings(max_examples=500, deadline=None)
@given(positions_st, rules_st, st.decimals(min_value=0, max_value=D("0.99"), places=3))
def test_rates_and_the_explicit_inverse_are_the_plain_decimal_ones(
    position: Position, rules: SymbolRules, distance: D
) -> None:
    """Margins (what is sent) do not depend on the fast power: they are to the digit what
    the plain Decimal power gives."""

    def rate(floor: D, factor: D, notional: D) -> D:
        return max(floor, factor * notional ** D("0.8")) if notional > 0 else floor

    slope = rules.base_mmr / rules.base_imr * rules.imr_factor
    notional = abs(position.qty) * position.mark_price
    assert risk.mmr(notional, rules) == rate(rules.base_mmr, slope, notional)
    floor = max(1 / D(position.leverage), rules.base_imr)
    assert risk.imr(notional, position.leverage, rules) == rate(floor, rules.imr_factor, notional)
    target = risk.target_liquidation_price(position, distance)
    at_target = abs(position.qty) * target
    needed = (
        at_target * rate(rules.base_mmr, slope, at_target)
        - position.qty * target
        + position.cost_position
        + risk.funding_owed(position)
    )
    assert risk.margin_for_distance(position, rules, distance) == max(D(0), needed)


def _reference_liquidation_price(
    position: Position, rules: SymbolRules, near: D | None = None
) -> D | None:
    """The liquidation price by the definition, with 80 digits: bisection of the surplus
    ``k + N - N*mmr(N)`` (a long) or ``k - N - N*mmr(N)`` (a short) over the notional,
    from within 1e-11 of the price ``near`` if the surplus's signs show the root there."""
    size = abs(position.qty)
    k = position.margin - position.cost_position - risk.funding_owed(position)
    with localcontext() as context:
        context.prec = 80
        slope = rules.base_mmr / rules.base_imr * rules.imr_factor
        sign = 1 if position.qty > 0 else -1

        def surplus(notional: D) -> D:
            ratio = rules.base_mmr
            if notional > 0 and slope > 0:
                ratio = max(ratio, slope * notional ** D("0.8"))
            return k + sign * notional - notional * ratio

        if sign > 0:
            if k >= 0:
                return None
            if slope == 0:
                return -k / (1 - rules.base_mmr) / size
            peak = (1 / (D("1.8") * slope)) ** D("1.25")
            if surplus(peak) <= 0:
                return max(peak / size, position.mark_price)
            low, high = D(0), peak
        else:
            if k <= 0:
                return D(0)
            if slope == 0:
                return k / (1 + rules.base_mmr) / size
            low, high = D(0), k
        steps = 300  # to 1e-80 of the bracket
        if near is not None:
            close = (near * size * (1 - D("1e-11")), near * size * (1 + D("1e-11")))
            liquidated_below = sign > 0  # a long's surplus is negative below its root
            if (low < close[0] and close[1] < high
                    and (surplus(close[0]) < 0) == liquidated_below
                    and (surplus(close[1]) < 0) != liquidated_below):  # fmt: skip
                (low, high), steps = close, 70
        for _ in range(steps):
            middle = (low + high) / 2
            if (surplus(middle) < 0) == (sign > 0):
                low = middle
            else:
                high = middle
        return (low + high) / 2 / size


def _check_against_the_reference(position: Position, rules: SymbolRules) -> None:
    ours = risk.liquidation_price(position, rules)
    reference = _reference_liquidation_price(position, rules, ours)
    if ours is None or reference is None or reference == 0:
        assert ours == reference
        return
    slack = D("1e-25") * reference  # the 28-digit roundings of the results
    if position.qty > 0:  # liquidated at or below ours: ours is at or above the root
        assert reference - slack <= ours <= reference * (1 + risk.DISTANCE_TOLERANCE) + slack
    else:
        assert reference * (1 - risk.DISTANCE_TOLERANCE) - slack <= ours <= reference + slack


growing_rules_st = st.builds(
    lambda base_imr, ratio, factor: SymbolRules(
        "PERP_X_USDC", base_imr=base_imr, base_mmr=base_imr * ratio, imr_factor=factor
    ),
    st.sampled_from([D("0.01"), D("0.02"), D("0.05"), D("0.1"), D("0.5")]),
    st.sampled_from([D("0.3"), D("0.5"), D("0.6"), D("0.8")]),
    st.sampled_from([D(0), D("2.512e-7"), D("1e-6"), D("1e-5"), D("1e-4"), D("1e-3")]),
)


@settings(max_examples=400, deadline=None)
@given(positions_st, growing_rules_st)
def test_liquidation_prices_are_the_conservative_root_within_the_tolerance(
    position: Position, rules: SymbolRules
) -> None:
    """Flat and growing MMR, longs and shorts, funding owed, margins from none to far more
    than the cost (leverages from below 1 to beyond any the exchange allows): the result
    is on the mark's side of the true root and within 1e-12 of it, the contract the
    bracketed Decimal Newton of before kept too, so both give the same answer to 1e-12."""
    _check_against_the_reference(position, rules)


@pytest.mark.parametrize("above_zero", [D("1e-3"), D(1), D(1000), D("1e6")])
def test_a_root_next_to_the_peak_of_a_long_s_surplus(above_zero: D) -> None:
    """Where the surplus is nearly flat at its root (just below the peak, where MMR reaches
    1/1.8), the float root is off by more than the Decimal bracket: Newton in Decimal
    finishes it, with the same contract."""
    rules = GROWING
    slope = rules.base_mmr / rules.base_imr * rules.imr_factor
    peak = (1 / (D("1.8") * slope)) ** D("1.25")
    qty = D(1000)
    # k + peak - peak*mmr(peak) = above_zero: the root is just below the peak
    k = above_zero - peak + peak * risk.mmr(peak, rules)
    long = replace(LONG, qty=qty, cost_position=-k, margin=D(0), mark_price=peak / qty * 2,
                   unsettled_pnl=qty * peak / qty * 2 + k)  # fmt: skip
    _check_against_the_reference(long, rules)


def test_the_rules_constants_do_not_depend_on_the_first_caller_s_context() -> None:
    """``_curve`` and ``_imr_rate`` cache what the rules fix, keyed on the rules' values
    only: whatever Decimal context the first caller had (a plugin policy under
    ``localcontext(prec=10)``) must not leak into every later answer. Before the cache the
    slope was recomputed in each caller's context."""
    rules = SymbolRules(
        "PERP_Z_USDC", base_imr=D("0.03"), base_mmr=D("0.02"), imr_factor=D("0.0000023")
    )
    long = replace(
        LONG, symbol="PERP_Z_USDC", qty=D(100), mark_price=D(3000),
        cost_position=D(300000), margin=D(30000), unsettled_pnl=D(0),
    )  # fmt: skip
    risk._curve.cache_clear()
    risk._imr_rate.cache_clear()
    with localcontext() as narrow:
        narrow.prec = 10
        risk.liquidation_price(long, rules)
        risk.max_removable(long, rules)
    slope = rules.base_mmr / rules.base_imr * rules.imr_factor
    notional = D(300000)
    assert risk.mmr(notional, rules) == slope * notional ** D("0.8")
    assert risk.imr(notional, 10, rules) == max(D("0.1"), rules.imr_factor * notional ** D("0.8"))
    # what a top-up to 9 % sends, and where the long is said to liquidate
    target = long.mark_price * D("0.91")
    at_target = long.qty * target
    needed = at_target * (slope * at_target ** D("0.8")) - at_target + long.cost_position
    assert risk.margin_for_distance(long, rules, D("0.09")) == needed
    _check_against_the_reference(long, rules)
