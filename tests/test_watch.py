"""The mark watch against a brute force: after any sequence of cells, "always" marks,
forgets, resets and ticks, a tick visits exactly the positions whose cell does not hold the
new mark, the "always" ones, and those whose calm-only cell is under a moving condition."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given, settings
from hypothesis import strategies as st

from guardbot.domain import MarginMode, PositionKey
from guardbot.policies.quiet import Cell
from guardbot.watch import MarkWatch

SYMBOLS = ("PERP_A_USDC", "PERP_B_USDC")
KEYS: list[PositionKey] = [(f"0x{a:02x}", s, MarginMode.ISOLATED)
                           for a in range(6) for s in SYMBOLS]  # fmt: skip
CALM = ((D("0.03"), D(5)),)
prices = st.integers(1, 40).map(lambda n: D(n) * 5)
cells = st.builds(lambda a, b, near, calm: Cell(min(a, b), max(a, b), near, CALM if calm else ()),
                  prices, prices, st.booleans(), st.booleans())
steps = st.one_of(
    st.tuples(st.just("cell"), st.sampled_from(KEYS), cells),
    st.tuples(st.just("always"), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("forget"), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("forget_account"), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("reset"), st.none(), st.none()),
    st.tuples(st.just("tick"), st.sampled_from(SYMBOLS), st.tuples(prices, st.booleans())),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, max_size=60))
def test_a_tick_visits_what_a_brute_force_finds(script: list[tuple[str, object, object]]) -> None:
    watch = MarkWatch()
    model_cells: dict[PositionKey, Cell] = {}
    model_always: set[PositionKey] = set()
    for kind, target, arg in script:
        if kind == "cell":
            assert isinstance(target, tuple) and isinstance(arg, Cell)
            watch.cell(target, arg)
            model_cells[target] = arg
            model_always.discard(target)
        elif kind == "always":
            assert isinstance(target, tuple)
            watch.always(target)
            model_cells.pop(target, None)
            model_always.add(target)
        elif kind == "forget":
            assert isinstance(target, tuple)
            watch.forget(target)
            model_cells.pop(target, None)
            model_always.discard(target)
        elif kind == "forget_account":
            assert isinstance(target, tuple)
            watch.forget_account(target[0])
            for key in [k for k in (*model_cells, *model_always) if k[0] == target[0]]:
                model_cells.pop(key, None)
                model_always.discard(key)
        elif kind == "reset":
            model_always |= model_cells.keys()
            model_cells.clear()
            watch.reset()
        else:
            assert isinstance(target, str) and isinstance(arg, tuple)
            mark, moving = arg
            assert watch.speeds(target) == (
                [CALM] if any(c.speeds for k, c in model_cells.items() if k[1] == target) else [])
            left = {k for k, c in model_cells.items()
                    if k[1] == target and not c.low <= mark <= c.high}  # fmt: skip
            calm_only = {k for k, c in model_cells.items()
                         if k[1] == target and moving and c.speeds}  # fmt: skip
            expected = left | {k for k in model_always if k[1] == target} | calm_only
            assert watch.visit(target, mark, moving=[CALM] if moving else []) == expected
            for key in left:  # left their cells: "always" until given a new one
                del model_cells[key]
                model_always.add(key)
        for key, cell in model_cells.items():
            assert watch.near(key) is cell.near
        assert len(watch) == len(model_cells) + len(model_always)


def test_replaced_cells_do_not_pile_up_in_the_heaps() -> None:
    watch = MarkWatch()
    key = KEYS[0]
    for n in range(10_000):
        watch.cell(key, Cell(D(n), D(n + 10), False))
    entry = watch._symbols[key[1]]  # the compaction is what is tested
    assert len(entry.highs) <= 2 * len(entry.cells) + 64
    assert watch.visit(key[1], D(10_005)) == set()
    assert watch.visit(key[1], D(1)) == {key}


def test_cells_left_upwards_do_not_pile_up_in_the_lows() -> None:
    """A mark that keeps rising takes the position out of its cell through the top each
    time, and the guard gives it the next cell up (a sweep reducing margin in a rally).
    Each left cell's upper end leaves the min-heap as it surfaces, but its lower end stays
    in the max-heap until the mark falls below it, which in a trend it never does; at
    96f1824 the compaction looked at the upper ends only, so the lows grew by one entry
    per cell forever (memory of a long-running daemon). Fails at 96f1824."""
    watch = MarkWatch()
    key = KEYS[0]
    for n in range(10_000):
        watch.cell(key, Cell(D(n), D(n + 1), False))
        assert watch.visit(key[1], D(n) + D("1.5")) == {key}  # left through the top
    watch.cell(key, Cell(D(10_000), D(10_001), False))
    entry = watch._symbols[key[1]]  # the compaction is what is tested
    assert len(entry.lows) <= 2 * len(entry.cells) + 64
