"""One scenario end to end: the daemon's decision path on the engine in virtual time, the
unguarded twins, the audit log read back and compared with the exchange's ledger."""

from __future__ import annotations

import hashlib
from decimal import Decimal

from backtest.conftest import written_config
from guardbot.arbiter import Refusal
from guardbot.audit.ledger import Status
from guardbot.backtest.paths import random_path, shape_path
from guardbot.backtest.portfolio import Book, BookAccount, BookPosition, load_book
from guardbot.backtest.results import AuditedAction, ScenarioResult, compare
from guardbot.backtest.runner import AuditTemplate, RunOptions, Scenario
from guardbot.backtest.variants import apply
from guardbot.backtest.venue import VenueParams
from guardbot.daemon import load_policies
from guardbot.domain import ActionKind

ETH = "PERP_ETH_USDC"


def one_long(leverage: int = 10) -> Book:
    return Book("one", (BookAccount("main", (BookPosition(ETH, Decimal(2), leverage),)),))


def test_the_guard_saves_a_crash_its_twin_dies_and_the_ledgers_agree(
    template: AuditTemplate,
) -> None:
    settings = written_config()
    result = Scenario(one_long(), shape_path("crash"), settings, load_policies(settings),
                      RunOptions(samples=True)).run(template)
    (position,) = result.positions
    assert position.guarded_liquidated_ms is None
    assert position.unguarded_liquidated_ms is not None
    assert position.verdict.savable and position.verdict.extra > 0
    assert position.added == position.peak_extra == position.final_extra > position.verdict.extra
    assert result.ledger.equal and result.ledger.total("audit", ActionKind.ADD) == position.added
    assert [a.status for a in position.history] == [Status.APPLIED] * len(position.history)
    assert position.actions == {"ADD applied": len(position.history)}
    assert all(a.reason.startswith("distance") for a in position.history)
    assert position.samples[0].margin == position.start_margin
    assert position.samples[-1].margin == position.start_margin + position.added
    assert result.wall_s < 10, "80 s of virtual time take a fraction of that"


def test_a_run_is_reproducible(template: AuditTemplate) -> None:
    settings = written_config()
    policies = load_policies(settings)

    def figures() -> list[tuple[object, ...]]:
        result = Scenario(load_book("demo"), shape_path("cascade", 2), settings, policies,
                          RunOptions()).run(template)
        return [(p.symbol, p.guarded_liquidated_ms, p.unguarded_liquidated_ms, p.added,
                 p.peak_extra, p.swept, tuple(sorted(p.actions.items())))
                for p in result.positions]

    assert figures() == figures()


def test_budgets_are_the_configs_and_refusals_are_counted_by_reason(
    template: AuditTemplate,
) -> None:
    settings = apply(written_config(), "budgets.per_position_per_day", "150")
    result = Scenario(one_long(), shape_path("crash"), settings, load_policies(settings),
                      RunOptions()).run(template)
    (position,) = result.positions
    assert not position.verdict.savable
    assert position.guarded_liquidated_ms is not None
    assert position.added <= Decimal(150)
    assert result.refusals[Refusal.BUDGET] > 0
    assert position.refusals[Refusal.BUDGET] == result.refusals[Refusal.BUDGET]
    assert any(n.refusal is Refusal.BUDGET for n in position.last_decisions)
    assert result.ledger.equal


def test_a_dry_run_config_still_acts_in_a_backtest(template: AuditTemplate) -> None:
    settings = written_config()
    settings = settings.model_copy(update={"guard": settings.guard.model_copy(
        update={"dry_run": True})})
    result = Scenario(one_long(), shape_path("crash"), settings, load_policies(settings),
                      RunOptions()).run(template)
    assert result.positions[0].added > 0


def test_the_ledger_check_finds_any_difference() -> None:
    applied = [("a", ETH, ActionKind.ADD, Decimal(10)), ("a", ETH, ActionKind.ADD, Decimal(5))]

    def action(amount: str, status: Status) -> AuditedAction:
        return AuditedAction("id", 0, "a", ETH, ActionKind.ADD, Decimal(amount), status,
                             "SUCCEEDED", "why")

    same = compare(applied, [action("10", Status.APPLIED), action("5", Status.APPLIED)])
    assert same.equal and same.total("exchange", ActionKind.ADD) == Decimal(15)
    assert not compare(applied, [action("10", Status.APPLIED)]).equal
    assert not compare(applied, [action("10", Status.APPLIED), action("5", Status.UNKNOWN)]
                       ).equal
    assert not compare(applied, [action("10", Status.APPLIED), action("6", Status.APPLIED)]
                       ).equal


def decisions(result: ScenarioResult) -> str:
    """Everything the guard decided in a run, as text: each audited action (time, position,
    kind, amount, outcome), each position's fate and figures, refusals by reason and the
    calls the venue answered."""
    lines = [f"{a.time_ms} {a.account_id} {a.symbol} {a.kind.value} {a.amount} "
             f"{a.status.value} {a.reason}"
             for p in result.positions for a in p.history]  # fmt: skip
    lines += [f"{p.account} {p.guarded_liquidated_ms} {p.unguarded_liquidated_ms} {p.added} "
              f"{p.swept} {p.peak_extra} {p.final_extra} {sorted(p.actions.items())} "
              f"{sorted((r.value, n) for r, n in p.refusals.items())}"
              for p in result.positions]  # fmt: skip
    lines += [f"{k} {v}" for k, v in sorted(result.venue.items())]
    return "\n".join(lines)


# What the run below decided before the backtest was made faster (commit ddb48e6): a speed-up
# must not change a single action, amount or time. If a change to the decision path means to
# change them, compute the new digest and say why in the commit.
GOLDEN = "9c99c779156c48f545c6a7f75135d8fda963626c9be93a19d0bbe712e4e13936"


def test_a_faster_backtest_decides_exactly_as_before(template: AuditTemplate) -> None:
    # The config the golden digest was taken with (topup's target 0.10, no look-ahead then).
    settings = apply(apply(written_config(), "topup.target", "0.10"), "topup.reach_s", "0")
    policies = load_policies(settings)
    leverages = (3, 5, 10, 20)
    book = Book("golden", tuple(
        BookAccount(f"a{i}", (BookPosition(ETH, Decimal(1), leverages[i % 4]),),
                    free_usdc=Decimal(20000))
        for i in range(8)))  # fmt: skip
    runs = [Scenario(book, path, settings, policies, RunOptions(VenueParams(lost=lost, seed=5))
                     ).run(template)
            for path, lost in ((shape_path("staircase", 3), 0.3), (shape_path("whipsaw"), 0.0),
                               (random_path(600, seed=11), 0.0))]  # fmt: skip
    kinds = {a.kind for r in runs for p in r.positions for a in p.history}
    assert ActionKind.ADD in kinds  # it decides something
    assert runs[0].venue["lost answers"] >= 1
    text = "\n\n".join(decisions(r) for r in runs)
    assert hashlib.sha256(text.encode()).hexdigest() == GOLDEN, text


def test_typed_polls_decide_exactly_as_polls_through_the_json(template: AuditTemplate) -> None:
    settings = written_config()
    policies = load_policies(settings)
    book = Book("both", tuple(
        BookAccount(f"a{i}", (BookPosition(ETH, Decimal(1), leverage),), free_usdc=Decimal(5000))
        for i, leverage in enumerate((5, 10, 20))))  # fmt: skip

    def run(wire: bool) -> str:
        options = RunOptions(VenueParams(lost=0.3, seed=3, wire=wire))
        return decisions(Scenario(book, shape_path("staircase", 2), settings, policies,
                                  options).run(template))

    typed = run(False)
    assert "ADD" in typed
    assert typed == run(True)
