"""Backtest results for people and for scripts: a terminal table, JSON, CSV, and the
trade-off table of ``--param`` runs. Money is printed as decimal text, never a float.

Capital is shown two ways for each saved position that needed margin: PEAK/ORACLE, the
peak extra margin over the oracle's, and EXCESS, the peak minus the oracle's in USDC. The
ratio says how far from perfect foresight a policy is, but where the oracle needs a few
USDC (a path that only just reaches the liquidation price) it is large for any rescue; the
excess says what that costs in money."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from guardbot.backtest.results import (
    PositionResult,
    ScenarioResult,
    excesses,
    median_and_worst,
    ratios,
)
from guardbot.domain import ActionKind

CENT = Decimal("0.01")


def usdc(amount: Decimal) -> str:
    return format(amount.quantize(CENT), "f")


def _fate(at_ms: int | None, start_ms: int) -> str:
    return "alive" if at_ms is None else f"LIQ {(at_ms - start_ms) / 1000:g}s"


def _ratio(result: PositionResult) -> str:
    ratio = result.ratio
    return "-" if ratio is None else f"{ratio:.2f}"


def _usdc_or_dash(amount: Decimal | None) -> str:
    return "-" if amount is None else usdc(amount)


def position_row(scenario: ScenarioResult, p: PositionResult) -> dict[str, Any]:
    """One position of one scenario, as JSON-able values (money as strings)."""
    start = scenario.start_ms
    return {
        "path": scenario.path, "speed": scenario.speed,
        "steepest_fall_pct_s": round(scenario.steepest * 100, 3), "account": p.account,
        "symbol": p.symbol, "side": p.side, "leverage": p.leverage, "qty": str(p.qty),
        "start_margin": usdc(p.start_margin),
        "guarded_liquidated_s": None if p.guarded_liquidated_ms is None
        else (p.guarded_liquidated_ms - start) / 1000,
        "unguarded_liquidated_s": None if p.unguarded_liquidated_ms is None
        else (p.unguarded_liquidated_ms - start) / 1000,
        "savable": p.verdict.savable, "oracle_extra": usdc(p.verdict.extra),
        "oracle_cap": usdc(p.verdict.cap), "oracle_binding": p.verdict.binding,
        "worst_mark": str(p.verdict.worst_mark),
        "added": usdc(p.added), "swept": usdc(p.swept), "peak_extra": usdc(p.peak_extra),
        "final_extra": usdc(p.final_extra), "peak_over_oracle": p.ratio,
        "peak_excess": None if p.excess is None else usdc(p.excess),
        "actions": dict(sorted(p.actions.items())),
        "refusals": {r.value: n for r, n in sorted(p.refusals.items())},
    }  # fmt: skip


def scenario_json(scenario: ScenarioResult) -> dict[str, Any]:
    ledger = scenario.ledger
    return {
        "path": scenario.path, "speed": scenario.speed, "duration_s": scenario.duration_s,
        "positions": [position_row(scenario, p) for p in scenario.positions],
        "refusals": {r.value: n for r, n in sorted(scenario.refusals.items())},
        "ledger": {
            "equal": ledger.equal, "unsettled": ledger.unsettled,
            "exchange": {"added": usdc(ledger.total("exchange", ActionKind.ADD)),
                         "reduced": usdc(ledger.total("exchange", ActionKind.REDUCE)),
                         "changes": sum(n for n, _ in ledger.exchange.values())},
            "audit": {"added": usdc(ledger.total("audit", ActionKind.ADD)),
                      "reduced": usdc(ledger.total("audit", ActionKind.REDUCE)),
                      "changes": sum(n for n, _ in ledger.audit.values())},
        },
        "exchange_calls": dict(sorted(scenario.venue.items())),
        "wall_s": round(scenario.wall_s, 3),
    }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Totals:
    """A set of scenarios in one line: what a ``--param`` value bought."""

    positions: int
    savable: int
    savable_lost: int
    guarded_liquidations: int
    unguarded_liquidations: int
    peak_extra: Decimal
    added: Decimal
    swept: Decimal
    median_ratio: float | None
    worst_ratio: float | None
    median_excess: Decimal | None
    worst_excess: Decimal | None
    ledgers_equal: bool

    @classmethod
    def of(cls, results: Sequence[ScenarioResult]) -> Totals:
        positions = [p for s in results for p in s.positions]
        median, worst = median_and_worst(ratios(results))
        median_excess, worst_excess = median_and_worst(excesses(results))
        return cls(
            positions=len(positions),
            savable=sum(p.verdict.savable for p in positions),
            savable_lost=sum(p.lost_savable for p in positions),
            guarded_liquidations=sum(p.guarded_liquidated_ms is not None for p in positions),
            unguarded_liquidations=sum(p.unguarded_liquidated_ms is not None
                                       for p in positions),
            peak_extra=sum((p.peak_extra for p in positions), Decimal(0)),
            added=sum((p.added for p in positions), Decimal(0)),
            swept=sum((p.swept for p in positions), Decimal(0)),
            median_ratio=median, worst_ratio=worst, median_excess=median_excess,
            worst_excess=worst_excess, ledgers_equal=all(s.ledger.equal for s in results),
        )  # fmt: skip

    def as_json(self) -> dict[str, Any]:
        return {
            "positions": self.positions, "savable": self.savable,
            "savable_lost": self.savable_lost,
            "guarded_liquidations": self.guarded_liquidations,
            "unguarded_liquidations": self.unguarded_liquidations,
            "peak_extra": usdc(self.peak_extra), "added": usdc(self.added),
            "swept": usdc(self.swept), "median_peak_over_oracle": self.median_ratio,
            "worst_peak_over_oracle": self.worst_ratio,
            "median_peak_excess": None if self.median_excess is None
            else usdc(self.median_excess),
            "worst_peak_excess": None if self.worst_excess is None else usdc(self.worst_excess),
            "ledgers_equal": self.ledgers_equal,
        }  # fmt: skip


def _table(rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]  # fmt: skip


HEADER = ("PATH", "SPEED", "FALL %/S", "ACCOUNT", "SYMBOL", "SIDE", "LEV", "GUARDED", "UNGUARDED",
          "SAVABLE", "ORACLE", "PEAK", "FINAL", "SWEPT", "PEAK/ORACLE", "EXCESS")


def _cells(scenario: ScenarioResult, p: PositionResult) -> tuple[str, ...]:
    start = scenario.start_ms
    return (scenario.path, f"{scenario.speed:g}", f"{scenario.steepest * 100:.2f}", p.account,
            p.symbol, p.side, f"{p.leverage}x", _fate(p.guarded_liquidated_ms, start),
            _fate(p.unguarded_liquidated_ms, start), "yes" if p.verdict.savable else "no",
            usdc(p.verdict.extra), usdc(p.peak_extra), usdc(p.final_extra), usdc(p.swept),
            _ratio(p), _usdc_or_dash(p.excess))  # fmt: skip


def _refusals(counter: Counter[Any]) -> str:
    return ", ".join(f"{r.value} {n}" for r, n in counter.most_common()) or "none"


def text(results: Sequence[ScenarioResult]) -> str:
    """The terminal report: one row per position and scenario, a line per scenario with
    its refusals and the ledger check, then the totals."""
    rows = [HEADER, *(_cells(s, p) for s in results for p in s.positions)]
    lines = _table(rows, right=frozenset({2, *range(10, 16)}))
    lines.append("")
    for s in results:
        ledger = s.ledger
        check = "equal" if ledger.equal else "DIFFERENT"
        lost = s.venue.get("lost answers", 0)
        lines.append(
            f"{s.label}: refusals {_refusals(s.refusals)}; exchange ledger {check} to the audit "
            f"log (added {usdc(ledger.total('exchange', ActionKind.ADD))}, reduced "
            f"{usdc(ledger.total('exchange', ActionKind.REDUCE))} USDC"
            f"{f', {ledger.unsettled} unsettled' if ledger.unsettled else ''}"
            f"{f', {lost} answers lost' if lost else ''}); {s.wall_s:.2f} s")
    totals = Totals.of(results)
    median, worst = totals.median_ratio, totals.worst_ratio
    lines += ["", (
        f"savable positions saved: {totals.savable - totals.savable_lost} of {totals.savable}; "
        f"liquidations guarded {totals.guarded_liquidations}, unguarded "
        f"{totals.unguarded_liquidations}; peak extra margin over the oracle's: median "
        f"{'-' if median is None else f'{median:.2f}'}, worst "
        f"{'-' if worst is None else f'{worst:.2f}'}; beyond the oracle's, in USDC: median "
        f"{_usdc_or_dash(totals.median_excess)}, worst {_usdc_or_dash(totals.worst_excess)}")]
    for s in results:
        for p in s.positions:
            if p.lost_savable:
                lines.append(explain(s, p))
    return "\n".join(lines)


def explain(scenario: ScenarioResult, p: PositionResult) -> str:
    """Why a savable position was lost: what the guard did and the arbiter said."""
    start = scenario.start_ms
    parts = [f"LOST {scenario.label} {p.account} {p.symbol} {p.side} {p.leverage}x at "
             f"{((p.guarded_liquidated_ms or start) - start) / 1000:g} s (the oracle needed "
             f"{usdc(p.verdict.extra)}, cap {p.verdict.binding}):"]
    for action in p.history:
        parts.append(f"  {(action.time_ms - start) / 1000:g}s {action.kind.value} "
                     f"{usdc(action.amount)} {action.status.value} ({action.last_event}): "
                     f"{action.reason}")
    for note in p.last_decisions:
        verdict = "approved" if note.approved else f"refused {note.refusal}"
        parts.append(f"  decided {(note.time_ms - start) / 1000:g}s {note.kind.value} "
                     f"{usdc(note.amount)} {verdict}: {note.reason}")
    if p.refusals:
        parts.append(f"  refusals: {_refusals(p.refusals)}")
    return "\n".join(parts)


def as_json(results: Sequence[ScenarioResult]) -> str:
    return json.dumps({"scenarios": [scenario_json(s) for s in results],
                       "totals": Totals.of(results).as_json()}, indent=2)


def as_csv(results: Sequence[ScenarioResult]) -> str:
    rows = [position_row(s, p) for s in results for p in s.positions]
    out = io.StringIO()
    fields = [k for k in rows[0] if k not in ("actions", "refusals")] if rows else []
    writer = csv.DictWriter(out, [*fields, "actions", "refusals"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        row["actions"] = " ".join(f"{k.replace(' ', ':')}={v}" for k, v in row["actions"].items())
        row["refusals"] = " ".join(f"{k}={v}" for k, v in row["refusals"].items())
        writer.writerow(row)
    return out.getvalue()


def trade_off(runs: Sequence[tuple[str, Sequence[ScenarioResult]]]) -> str:
    """One line per ``--param`` combination: liquidations against capital."""
    header = ("SETTINGS", "SAVABLE LOST", "GUARDED LIQ", "UNGUARDED LIQ", "PEAK EXTRA",
              "ADDED", "SWEPT", "MEDIAN PEAK/ORACLE", "WORST", "MEDIAN EXCESS", "WORST EXCESS",
              "LEDGERS")
    rows: list[tuple[str, ...]] = [header]
    for label, results in runs:
        t = Totals.of(results)
        rows.append((label, f"{t.savable_lost} of {t.savable}", str(t.guarded_liquidations),
                     str(t.unguarded_liquidations), usdc(t.peak_extra), usdc(t.added),
                     usdc(t.swept), "-" if t.median_ratio is None else f"{t.median_ratio:.2f}",
                     "-" if t.worst_ratio is None else f"{t.worst_ratio:.2f}",
                     _usdc_or_dash(t.median_excess), _usdc_or_dash(t.worst_excess),
                     "equal" if t.ledgers_equal else "DIFFERENT"))  # fmt: skip
    return "\n".join(_table(rows, right=frozenset(range(1, 11))))


def trade_off_json(runs: Sequence[tuple[str, Sequence[ScenarioResult]]]) -> str:
    return json.dumps({"trade_off": [{"settings": label, **Totals.of(results).as_json()}
                                     for label, results in runs]}, indent=2)  # fmt: skip
