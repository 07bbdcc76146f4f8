"""Failover time of account ownership (guardbot/ownership.py) on a real PostgreSQL server.

Starts three ``python -m guardbot.ownership`` processes sharing the accounts, waits until
they have divided them, SIGKILLs one at a random moment and measures the time until the two
survivors guard every account again. Repeats, then prints the figures.

    .venv/bin/python benchmarks/failover.py [--rounds 5] [--interval 2.0] [--accounts 30]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import time
import uuid

PG_URL = os.environ.get("GUARDBOT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


class Instance:
    def __init__(self, name: str, accounts: list[str], interval_s: float, ns: str) -> None:
        env = dict(
            os.environ,
            GUARDBOT_OWNERSHIP_NAMESPACE=ns,
            GUARDBOT_OWNERSHIP_INTERVAL_S=str(interval_s),
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "guardbot.ownership", PG_URL, name, *accounts],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.owned: frozenset[str] = frozenset()
        self.changed_at = 0.0

    def read(self) -> None:
        assert self.process.stdout is not None
        while select.select([self.process.stdout], [], [], 0)[0]:
            line = self.process.stdout.readline()
            if not line:
                return
            change = json.loads(line)
            self.owned, self.changed_at = frozenset(change["owned"]), change["t"]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def wait_covered(group: list[Instance], accounts: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for instance in group:
            instance.read()
        sets = [i.owned for i in group]
        if set().union(*sets) == set(accounts) and sum(map(len, sets)) == len(accounts):
            return
        time.sleep(0.01)
    raise SystemExit(f"accounts not covered within {timeout_s} s")


def one_round(accounts: list[str], interval_s: float) -> float:
    ns = f"bench-{uuid.uuid4().hex}"
    group = [Instance(f"i{n}", accounts, interval_s, ns) for n in range(3)]
    try:
        wait_covered(group, accounts, 10 * interval_s + 10)
        # Kill at a random phase of the survivors' tick cycle.
        time.sleep(interval_s * (1 + random.random()))
        victim, survivors = group[0], group[1:]
        victim.process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        victim.process.wait()
        wait_covered(survivors, accounts, 10 * interval_s + 10)
        return max(s.changed_at for s in survivors) - killed_at
    finally:
        for instance in group:
            instance.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0, help="ownership interval_s")
    parser.add_argument("--accounts", type=int, default=30)
    args = parser.parse_args()
    accounts = [f"0x{i:064x}" for i in range(1, args.accounts + 1)]
    times = [one_round(accounts, args.interval) for _ in range(args.rounds)]
    print(
        f"failover after SIGKILL (3 instances, {args.accounts} accounts, "
        f"interval_s={args.interval}, {args.rounds} rounds): "
        f"min {min(times):.2f} s, median {statistics.median(times):.2f} s, "
        f"max {max(times):.2f} s"
    )


if __name__ == "__main__":
    main()
