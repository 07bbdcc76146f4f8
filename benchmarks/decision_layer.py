"""How long the pure decision layer takes for one round over N isolated positions.

One round = for each position: PositionView.of (liquidation price, distance, removable
maximum) + evaluate_policies (topup and sweep) ; then one Arbiter.decide over all intents.
This is the CPU part of the tick-to-request latency; the rest is I/O (feeds, executor).

    .venv/bin/python benchmarks/decision_layer.py [--positions 100] [--rounds 50]

Prints the median and worst round, for small positions (flat MMR) and whale positions
(MMR growing with notional, solved numerically).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from decimal import Decimal as D

from guardbot.arbiter import Arbiter, ArbiterState
from guardbot.config import BudgetSettings
from guardbot.domain import MarginMode, Position, Source, SymbolRules
from guardbot.policies.base import PolicyContext, PositionView
from guardbot.policies.loader import LoadedPolicy
from guardbot.policies.runner import evaluate_policies
from guardbot.policies.sweep import Sweep
from guardbot.policies.topup import TopUp

ETH = SymbolRules("PERP_ETH_USDC", D("0.01"), D("0.006"), D("0.0000002512"))
ACCOUNT = "0x" + "ab" * 32


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


def one_round(book: list[Position], policies: list[LoadedPolicy], arbiter: Arbiter) -> int:
    ctx = PolicyContext(now_ms=1_000, free_balance=D(10**9))
    intents = []
    for position in book:
        view = PositionView.of(position, replace(ETH, symbol=position.symbol))
        intents.extend(evaluate_policies(policies, view, ctx).intents)
    state = ArbiterState(now_ms=1_000, free_balance={ACCOUNT: D(10**9)})
    return len(arbiter.decide(intents, state))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    policies = [LoadedPolicy("topup", TopUp()), LoadedPolicy("sweep", Sweep())]
    arbiter = Arbiter(BudgetSettings())
    for label, qty in (("flat MMR (1 ETH each)", D(1)), ("growing MMR (1000 ETH each)", D(1000))):
        book = positions(args.positions, qty)
        timings = []
        decisions = 0
        for _ in range(args.rounds):
            started = time.perf_counter()
            decisions = one_round(book, policies, arbiter)
            timings.append(time.perf_counter() - started)
        print(
            f"{label}: {args.positions} positions, {decisions} decisions/round: "
            f"median {statistics.median(timings) * 1000:.2f} ms, "
            f"worst {max(timings) * 1000:.2f} ms per round"
        )


if __name__ == "__main__":
    main()
