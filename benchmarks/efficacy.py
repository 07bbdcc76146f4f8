"""The efficacy suite as a measurement: savable positions saved and capital against the
oracle's, for the default config or ``--param`` variants of it. Prints its figures; asserts
nothing.

It runs exactly the suite of ``tests/backtest/test_efficacy.py`` (its cases, book and
config: every shape at falls of 0.2, 1, 3 and 5 %/s, the gap once; longs and shorts at 5x,
10x and 20x; with every answer and with 30 % of ``position_margin`` answers lost) through
the backtest, once per variant, serially. For each variant it prints one row per fall rate
(the gap on its own row) and one for the whole suite:

- ``saved``: savable position-runs that survived, of the savable ones;
- ``liq``: guarded liquidations (savable or not); ``ledgers``: whether the exchange's ledger
  of applied changes equals the audit log in every run;
- ``median`` and ``worst``: peak extra margin over the oracle's (the least margin added
  once at the start that survives the path), over the saved positions that needed margin;
- ``excess``: peak extra margin minus the oracle's, in USDC, median and worst, over the
  same positions; and ``idle``: the margin committed to positions the oracle says needed
  none (no ratio exists for them), summed.

Then the worst ratios with their scenario, position, oracle and peak, and every savable
position lost (``--explain``: with what the guard decided on it, ``report.explain``).

    .venv/bin/python benchmarks/efficacy.py                                   # the defaults
    .venv/bin/python benchmarks/efficacy.py --param topup.trigger=0.04,0.05 \\
        --param topup.target=0.08,0.09
    .venv/bin/python benchmarks/efficacy.py --lost 0 --rate 0.03 --rate 0.05
    .venv/bin/python benchmarks/efficacy.py --feed-delay-ms 2000 --round-trip-ms 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from backtest.conftest import written_config
from backtest.test_efficacy import LOST, RATES, cases, suite_book

from guardbot.backtest.paths import shape_path, speed_for
from guardbot.backtest.report import explain, usdc
from guardbot.backtest.results import PositionResult, ScenarioResult
from guardbot.backtest.runner import (
    AuditTemplate,
    RunOptions,
    Scenario,
    scratch_folder,
)
from guardbot.backtest.variants import parse_param, variants
from guardbot.backtest.venue import VenueParams
from guardbot.config import ConfigError
from guardbot.daemon import load_policies


def suite_cases(rates: Sequence[float], gap: bool) -> list[tuple[str, float, str]]:
    """(shape, speed, group): the suite's cases (``test_efficacy.cases``) whose fall rate is
    one of ``rates``, grouped by that rate (the gap, which falls at once, on its own)."""
    found = []
    for name, speed in cases():
        if name == "gap":
            if gap:
                found.append((name, speed, "gap"))
            continue
        rate = next((r for r in rates if math.isclose(speed_for(name, r), speed)), None)
        if rate is not None:
            found.append((name, speed, f"{rate * 100:g}%/s"))
    return found


@dataclass
class Group:
    savable: int = 0
    lost: int = 0
    liquidated: int = 0
    ratios: list[float] = field(default_factory=list)
    excess: list[Decimal] = field(default_factory=list)
    idle: Decimal = Decimal(0)
    ledgers_equal: bool = True
    runs: int = 0

    def add(self, scenario: ScenarioResult) -> None:
        self.runs += 1
        self.ledgers_equal &= scenario.ledger.equal
        for p in scenario.positions:
            self.savable += p.verdict.savable
            self.lost += p.lost_savable
            self.liquidated += p.guarded_liquidated_ms is not None
            if (ratio := p.ratio) is not None:
                self.ratios.append(ratio)
                self.excess.append(p.peak_extra - p.verdict.extra)  # p.excess
            elif p.verdict.extra <= 0:
                self.idle += p.peak_extra

    def row(self, label: str) -> list[str]:
        def num(values: Sequence[float], pick: Any) -> str:
            return f"{pick(values):.3f}" if values else "-"

        excess = sorted(self.excess)
        return [label, f"{self.savable - self.lost}/{self.savable}", str(self.liquidated),
                num(self.ratios, statistics.median), num(self.ratios, max),
                usdc(statistics.median(excess)) if excess else "-",
                usdc(excess[-1]) if excess else "-", usdc(self.idle),
                "equal" if self.ledgers_equal else "DIFFERENT"]  # fmt: skip

    def as_json(self) -> dict[str, Any]:
        return {
            "saved": self.savable - self.lost, "savable": self.savable, "lost": self.lost,
            "guarded_liquidations": self.liquidated,
            "median": statistics.median(self.ratios) if self.ratios else None,
            "worst": max(self.ratios) if self.ratios else None,
            "median_excess": usdc(statistics.median(self.excess)) if self.excess else None,
            "worst_excess": usdc(max(self.excess)) if self.excess else None,
            "idle": usdc(self.idle), "ledgers_equal": self.ledgers_equal, "runs": self.runs,
        }  # fmt: skip


HEADER = ["GROUP", "SAVED", "LIQ", "MEDIAN", "WORST", "EXCESS MED", "EXCESS MAX", "IDLE",
          "LEDGERS"]


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in rows)  # fmt: skip


def describe(scenario: ScenarioResult, lost: float, p: PositionResult) -> str:
    notional = abs(p.qty) * p.verdict.worst_mark
    return (f"{scenario.label} lost{lost:g} {p.account}: ratio {p.ratio:.2f}, oracle "
            f"{usdc(p.verdict.extra)}, peak {usdc(p.peak_extra)} (excess "
            f"{usdc(p.peak_extra - p.verdict.extra)} USDC, "
            f"{(p.peak_extra - p.verdict.extra) / notional * 100:.2f} % of the notional at "
            f"the worst mark), start margin {usdc(p.start_margin)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--param", action="append", default=[], metavar="KEY=V1,V2",
                        help="a policy or budget key and its values (repeatable)")
    parser.add_argument("--lost", action="append", type=float,
                        help=f"fraction of answers lost (repeatable; default {LOST})")
    parser.add_argument("--rate", action="append", type=float,
                        help=f"only the suite's falls at this rate a second (repeatable; of "
                        f"{RATES})")
    parser.add_argument("--no-gap", action="store_true", help="leave the gap out")
    parser.add_argument("--feed-delay-ms", type=int, default=VenueParams().feed_delay_ms)
    parser.add_argument("--round-trip-ms", type=int, default=VenueParams().round_trip_ms)
    parser.add_argument("--worst", type=int, default=3, help="worst ratios listed per variant")
    parser.add_argument("--json", action="store_true", help="one JSON line per variant too")
    parser.add_argument("--explain", action="store_true",
                        help="what the guard decided on each lost position, not just which")
    args = parser.parse_args()
    logging.getLogger("guardbot").setLevel(logging.ERROR)

    losts = tuple(args.lost or LOST)
    cases = suite_cases(tuple(args.rate or RATES), not args.no_gap)
    base = written_config()
    chosen = variants(base, [parse_param(p) for p in args.param])
    print(f"{len(cases)} paths x lost {losts} x {len(chosen)} variant(s); feed delay "
          f"{args.feed_delay_ms} ms, round trip {args.round_trip_ms} ms", flush=True)
    with scratch_folder() as folder:
        template = AuditTemplate(folder)
        for label, settings in chosen:
            try:
                policies = load_policies(settings)
            except ConfigError as exc:  # e.g. a sweep closer than topup's farthest restore
                print(f"\n== {label}: refused by the loader: {exc}", flush=True)
                continue
            groups: dict[str, Group] = {}
            total = Group()
            rated: list[tuple[float, str]] = []
            lost_lines: list[str] = []
            started = time.perf_counter()
            for lost in losts:
                venue = VenueParams(args.feed_delay_ms, args.round_trip_ms, lost, seed=7)
                for name, speed, group in cases:
                    scenario = Scenario(suite_book(), shape_path(name, speed), settings,
                                        policies, RunOptions(venue)).run(template)
                    groups.setdefault(group, Group()).add(scenario)
                    total.add(scenario)
                    for p in scenario.positions:
                        if p.ratio is not None:
                            rated.append((p.ratio, describe(scenario, lost, p)))
                        if p.lost_savable:
                            why = explain(scenario, p)
                            lost_lines.append(f"  lost{lost:g} " + (
                                why if args.explain else why.splitlines()[0]))
            wall = time.perf_counter() - started
            print(f"\n== {label} ({wall:.0f} s)")
            print(table([HEADER, *(g.row(k) for k, g in groups.items()),
                         total.row("all")]))
            for _, line in sorted(rated, reverse=True)[:args.worst]:
                print(f"  worst: {line}")
            for line in lost_lines:
                print(line)
            if args.json:
                print(json.dumps({"settings": label, "all": total.as_json(),
                                  **{k: g.as_json() for k, g in groups.items()}}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
