"""How fast the pure decision layer is: position evaluations per second, for one round over
N isolated positions on one core.

One round = for each position: PositionView.of (liquidation price, distance, removable
maximum) + evaluate_policies (topup and sweep); then one Arbiter.decide over all intents.
This is the CPU part of the tick-to-request latency; the rest is I/O (feeds, executor).
The symbols' rules are looked up per position, as the guard does (``Guard.rules``).

    .venv/bin/python benchmarks/decision_layer.py [--positions 100] [--rounds 50]
    .venv/bin/python benchmarks/decision_layer.py --positions 1000 --rounds 10 --compare main

Prints the median round (wall and CPU time), the worst and the evaluations per second
(positions / median wall time of a round), for small positions (flat MMR, the liquidation
price solved exactly) and whale positions (MMR growing with notional, solved
numerically), and a digest of the decisions (kind, amount, approval, refusal of each).
``--compare REV`` measures revision REV too (``git archive``, imported instead of this
tree), alternating the two ``--repeat`` times in one session so that both see the same
load, and says whether they decided the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from decimal import Decimal as D
from pathlib import Path
from typing import Any

from revisions import REPO, agreement, alternate, checkout

from guardbot.arbiter import Arbiter, ArbiterState, Decision
from guardbot.config import BudgetSettings
from guardbot.domain import MarginMode, Position, Source, SymbolRules
from guardbot.policies.base import PolicyContext, PositionView
from guardbot.policies.loader import LoadedPolicy
from guardbot.policies.runner import evaluate_policies
from guardbot.policies.sweep import Sweep
from guardbot.policies.topup import TopUp

ETH = SymbolRules("PERP_ETH_USDC", D("0.01"), D("0.006"), D("0.0000002512"))
ACCOUNT = "0x" + "ab" * 32
CASES = (("flat", "flat MMR (1 ETH each)", D(1)),
         ("growing", "growing MMR (1000 ETH each)", D(1000)))  # fmt: skip


def positions(count: int, qty: D) -> list[Position]:
    """Longs at mark 3000 with margins spread from endangered to over-margined."""
    made = []
    for i in range(count):
        cost = qty * 3000
        margin = cost * (D("0.008") + D(i % 40) / 100)
        made.append(
            Position(
                # one symbol per position, so the arbiter sees distinct positions
                account_id=ACCOUNT, symbol=f"PERP_X{i}_USDC", margin_mode=MarginMode.ISOLATED,
                qty=qty, average_open_price=D(3000), cost_position=cost, mark_price=D(3000),
                margin=margin, leverage=20, unsettled_pnl=D(0), est_liq_price=None,
                mmr=D("0.006"), imr=D("0.05"), last_sum_unitary_funding=D(0), seq=i,
                exchange_ms=0, received_ms=0, source=Source.REST,
            )
        )
    return made


def one_round(
    book: list[Position], rules: dict[str, SymbolRules], policies: list[LoadedPolicy],
    arbiter: Arbiter,
) -> list[Decision]:
    ctx = PolicyContext(now_ms=1_000, free_balance=D(10**9))
    intents = []
    for position in book:
        view = PositionView.of(position, rules[position.symbol])
        intents.extend(evaluate_policies(policies, view, ctx).intents)
    state = ArbiterState(now_ms=1_000, free_balance={ACCOUNT: D(10**9)})
    return arbiter.decide(intents, state)


def digest(decisions: list[Decision]) -> str:
    """What was decided, and nothing of how: equal digests, equal decisions."""
    text = "\n".join(
        f"{d.intent.symbol} {d.kind} {d.intent.amount} {d.approved} {d.amount} {d.refusal}"
        for d in decisions
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    policies = [LoadedPolicy("topup", TopUp()), LoadedPolicy("sweep", Sweep())]
    arbiter = Arbiter(BudgetSettings())
    figures: dict[str, Any] = {"positions": args.positions, "rounds": args.rounds}
    for name, _, qty in CASES:
        book = positions(args.positions, qty)
        rules = {p.symbol: SymbolRules(p.symbol, ETH.base_imr, ETH.base_mmr, ETH.imr_factor)
                 for p in book}  # fmt: skip
        timings, cpu = [], []
        decisions: list[Decision] = []
        for _ in range(args.rounds):
            started, started_cpu = time.perf_counter(), time.process_time()
            decisions = one_round(book, rules, policies, arbiter)
            cpu.append(time.process_time() - started_cpu)
            timings.append(time.perf_counter() - started)
        median = statistics.median(timings)
        figures[name] = {
            "median_ms": median * 1000, "worst_ms": max(timings) * 1000,
            "cpu_ms": statistics.median(cpu) * 1000, "per_s": args.positions / median,
            "decisions": len(decisions), "approved": sum(d.approved for d in decisions),
            "digest": digest(decisions),
        }  # fmt: skip
    return figures


def report(figures: dict[str, Any]) -> None:
    for name, label, _ in CASES:
        case = figures[name]
        print(f"{label}: {figures['positions']} positions, {case['decisions']} decisions/round "
              f"({case['approved']} approved): median {case['median_ms']:.2f} ms (CPU "
              f"{case['cpu_ms']:.2f} ms), worst {case['worst_ms']:.2f} ms per round, "
              f"{case['per_s']:,.0f} evaluations/s; decisions {case['digest']}")


def compare(args: argparse.Namespace) -> None:
    argv = ["--positions", str(args.positions), "--rounds", str(args.rounds)]
    with tempfile.TemporaryDirectory(prefix="guardbot-bench-") as folder:
        trees = {args.compare: checkout(args.compare, Path(folder) / "old"),
                 "this tree": REPO}  # fmt: skip
        print(f"{'code':<12} {'case':<8} {'median ms':>10} {'CPU ms':>8} {'worst ms':>10} "
              f"{'evals/s':>9}  decisions")

        def show(code: str, figures: dict[str, Any]) -> None:
            for name, _, _ in CASES:
                case = figures[name]
                print(f"{code:<12} {name:<8} {case['median_ms']:>10.2f} "
                      f"{case['cpu_ms']:>8.2f} {case['worst_ms']:>10.2f} "
                      f"{case['per_s']:>9,.0f}  {case['digest']}", flush=True)

        runs = alternate(__file__, trees, argv, args.repeat, show)
        print(f"medians over {args.repeat} runs of {args.positions} positions:")
        for name, label, _ in CASES:
            speeds = {code: statistics.median(f[name]["per_s"] for f in found)
                      for code, found in runs.items()}  # fmt: skip
            old, new = speeds.values()
            print(f"  {label}: " + ", ".join(f"{code} {speed:,.0f}/s"
                                             for code, speed in speeds.items())
                  + f"; speed-up {new / old:.1f}x")  # fmt: skip
            print("    " + agreement(f[name]["digest"] for found in runs.values()
                                  for f in found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--compare", metavar="REV",
                        help="also measure git revision REV, alternating with this tree")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each with --compare")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return
    figures = measure(args)
    if args.json:
        print(json.dumps(figures))
    else:
        report(figures)


if __name__ == "__main__":
    main()
