"""AccountOwnership against SQLite and the real PostgreSQL server (tests/conftest.py PG_URL).

Every PostgreSQL test uses its own lock namespace, so runs in parallel never meet.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PG_URL
from faults.pgcluster import PgCluster

from guardbot import ownership
from guardbot.clock import ManualClock
from guardbot.ownership import AccountOwnership, OwnershipError

ACCOUNTS = [f"0x{i:064x}" for i in range(1, 11)]
FAST = 0.1  # interval_s for in-process instances: real PostgreSQL, accelerated ticks


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """Poll ``condition`` until it holds; return how long it took (fails on timeout)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def namespace() -> str:
    return f"test-{uuid.uuid4().hex}"


def balanced(instances: list[AccountOwnership]) -> bool:
    sets = [i.owned() for i in instances]
    quota = math.ceil(len(ACCOUNTS) / len(instances))
    return (
        set().union(*sets) == set(ACCOUNTS)
        and sum(len(s) for s in sets) == len(ACCOUNTS)
        and all(len(s) <= quota for s in sets)
    )


# -- SQLite: one instance owns everything -------------------------------------------------


async def test_sqlite_instance_owns_every_account(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    async with AccountOwnership(url, "only", ACCOUNTS) as own:
        assert own.owned() == frozenset(ACCOUNTS)
        assert own.live_instances == 1
    assert own.owned() == frozenset()


async def test_second_instance_on_the_same_sqlite_file_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    async with AccountOwnership(url, "first", ACCOUNTS):
        with pytest.raises(OwnershipError, match="only one instance"):
            async with AccountOwnership(url, "second", ACCOUNTS):
                pass
    # Released on exit: a new instance may start.
    async with AccountOwnership(url, "third", ACCOUNTS) as own:
        assert own.owned() == frozenset(ACCOUNTS)


@pytest.mark.parametrize(
    ("url", "reason"),
    [("mysql://u@h/db", "needs PostgreSQL or SQLite"), ("not a url", "not a valid")],
)
def test_unsupported_database_is_a_clear_error(url: str, reason: str) -> None:
    with pytest.raises(OwnershipError, match=reason):
        AccountOwnership(url, "x", ACCOUNTS)


# -- PostgreSQL, in process ---------------------------------------------------------------


def pg_instance(ns: str, name: str, **kwargs: Any) -> AccountOwnership:
    return AccountOwnership(PG_URL, name, ACCOUNTS, interval_s=FAST, namespace=ns, **kwargs)


@pytest.mark.postgres
async def test_three_instances_divide_the_accounts_and_take_over_from_a_leaver() -> None:
    ns = namespace()
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(pg_instance(ns, "a"))
        assert a.owned() == frozenset()  # nothing until the accounts have been free a while
        await until(lambda: a.owned() == frozenset(ACCOUNTS))  # alone: everything
        async with (
            pg_instance(ns, "b") as b,
            pg_instance(ns, "c") as c,
        ):
            await until(lambda: balanced([a, b, c]))
            assert a.live_instances == b.live_instances == c.live_instances == 3


@pytest.mark.postgres
async def test_leaver_accounts_are_taken_over_and_waiters_are_woken() -> None:
    ns = namespace()
    async with pg_instance(ns, "a") as a, pg_instance(ns, "b") as b:
        leaver = pg_instance(ns, "c")
        async with leaver:
            await until(lambda: balanced([a, b, leaver]))
            orphaned = leaver.owned()
            assert orphaned
            woken = asyncio.gather(a.wait_changed(), b.wait_changed())
        took = await until(lambda: balanced([a, b]))
        assert took < 2.0
        await asyncio.wait_for(woken, 1.0)
        assert orphaned <= a.owned() | b.owned()


@pytest.mark.postgres
async def test_duplicate_instance_id_is_refused_with_a_clear_error() -> None:
    ns = namespace()
    async with pg_instance(ns, "same"):
        with pytest.raises(OwnershipError, match="own instance id"):
            async with pg_instance(ns, "same"):
                pass


async def test_unreachable_database_is_a_clear_error_at_start() -> None:
    url = "postgresql+psycopg://postgres:hunter2-secret@127.0.0.1:1/test"
    with pytest.raises(OwnershipError, match="cannot reach") as raised:
        async with AccountOwnership(url, "x", ACCOUNTS):
            pass
    assert "hunter2" not in str(raised.value)


@pytest.mark.postgres
async def test_no_account_is_ever_owned_twice_under_churn() -> None:
    """Instances join and leave repeatedly; at every change no account has two owners."""
    ns = namespace()
    live: list[AccountOwnership] = []
    overlaps: list[set[str]] = []

    def check(_: frozenset[str]) -> None:
        seen: set[str] = set()
        for instance in live:
            overlaps.append(seen & instance.owned())
            seen |= instance.owned()

    def make(name: str) -> AccountOwnership:
        own = pg_instance(ns, name, on_change=check)
        live.append(own)
        return own

    async with make("anchor") as anchor:
        for round_ in range(4):
            async with make(f"x{round_}") as x, make(f"y{round_}") as y:
                group = [anchor, x, y]
                await until(lambda: balanced(group))  # noqa: B023 - awaited in this iteration
            live[:] = [anchor]
            await until(lambda: anchor.owned() == frozenset(ACCOUNTS))
    assert overlaps and not any(overlaps)


def held_by(application_name: str) -> int:
    """How many advisory locks the sessions named ``application_name`` hold right now in
    the test database (pg_locks is the whole server's: a run on another database may use
    the same names)."""
    with psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND a.application_name = %s"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (application_name,),
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.postgres
async def test_lost_lock_connection_keeps_the_accounts_and_relocks_them() -> None:
    """The server ends our session (restart, admin kill): the locks are gone, but nobody can
    take the accounts before we re-lock them on the next tick, so we never stop guarding."""
    ns = namespace()
    changes: list[frozenset[str]] = []
    async with pg_instance(ns, "victim", on_change=changes.append) as own:
        await until(lambda: own.owned() == frozenset(ACCOUNTS))
        async with pg_instance(ns, "peer") as peer:
            with psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'guardbot:victim'"
                )
            # Membership plus every account, on a new session.
            await until(lambda: held_by("guardbot:victim") == 1 + len(ACCOUNTS))
            # The peer gets its share by rebalancing, never by taking a lost lock.
            await until(lambda: balanced([own, peer]))
    assert changes[0] == frozenset(ACCOUNTS) and frozenset() not in changes[:-1]  # -1: exit


@pytest.mark.postgres
async def test_database_down_longer_than_hold_drops_then_relocks_at_once() -> None:
    with PgCluster() as pg:
        changes: list[frozenset[str]] = []
        async with AccountOwnership(
            pg.url, "solo", ACCOUNTS, interval_s=FAST, hold_s=0.5, on_change=changes.append
        ) as own:
            await until(lambda: own.owned() == frozenset(ACCOUNTS))
            pg.stop()
            # (Waiting for the notifications, not owned(), here and below: owned() changes
            # before on_change runs, and a wait that ends in between would see the old one.)
            await until(lambda: len(changes) == 2 and changes[-1] == frozenset(), timeout_s=8)
            pg.start()
            # Back past its hold: taken as a new instance takes free accounts (stale_ticks).
            took = await until(lambda: changes[-1] == frozenset(ACCOUNTS))
    assert took < 1.0
    assert changes == [frozenset(ACCOUNTS), frozenset(), frozenset(ACCOUNTS), frozenset()]


@pytest.mark.postgres
async def test_database_down_shorter_than_hold_keeps_guarding() -> None:
    with PgCluster() as pg:
        changes: list[frozenset[str]] = []
        async with AccountOwnership(
            pg.url, "solo", ACCOUNTS, interval_s=FAST, hold_s=5.0, on_change=changes.append
        ) as own:
            await until(lambda: own.owned() == frozenset(ACCOUNTS))
            pg.stop()
            await asyncio.sleep(1.0)  # the outage itself: real time on a real server
            assert own.owned() == frozenset(ACCOUNTS)
            # Alone, it keeps acting (several instances could not tell an outage from being
            # cut off: they stop at their lease).
            assert acting(own) == frozenset(ACCOUNTS)
            pg.start()
            with psycopg.connect(pg.url.replace("+psycopg", ""), autocommit=True) as admin:

                def relocked() -> bool:
                    row = admin.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    ).fetchone()
                    # Membership, the alone marker and every account.
                    return bool(row) and row[0] == 2 + len(ACCOUNTS)

                await until(relocked)
    assert changes == [frozenset(ACCOUNTS), frozenset()]  # the last one is the exit


def test_hold_longer_than_the_server_keeps_locks_is_refused() -> None:
    with pytest.raises(ValueError, match="hold_s"):
        AccountOwnership(PG_URL, "x", ACCOUNTS, hold_s=3600)


# -- PostgreSQL, hung peers on virtual time ------------------------------------------------
#
# Each instance runs on its own ManualClock against the real server: an instance whose
# clock is not moved runs no tick, exactly as a stopped process (its session stays open and
# idle). Queries take real milliseconds; the ticks, leases and stale waits are virtual.


async def step(clock: ManualClock, ticks: int = 1) -> None:
    """Let the instance on ``clock`` run ``ticks`` ticks of the default interval, each to
    its end (it is asleep again)."""
    for _ in range(ticks):
        await until(lambda: clock.next_wakeup() is not None)
        clock.advance(ownership.DEFAULT_INTERVAL_S)
        await until(lambda: clock.next_wakeup() is not None)


async def step_both(ca: ManualClock, cb: ManualClock, ticks: int) -> None:
    """Two instances tick in turn, ``ticks`` each (long enough to settle who owns what)."""
    for _ in range(ticks):
        await step(ca)
        await step(cb)


def on_clock(ns: str, name: str, clock: ManualClock, **kwargs: Any) -> AccountOwnership:
    return AccountOwnership(PG_URL, name, ACCOUNTS, namespace=ns, clock=clock, **kwargs)


def acting(instance: AccountOwnership) -> frozenset[str]:
    return frozenset(a for a in ACCOUNTS if instance.may_act(a))


@pytest.mark.postgres
async def test_a_hung_peer_is_terminated_its_accounts_taken_and_it_cannot_act_when_woken() -> None:
    """B stops ticking (SIGSTOP): A sees B's heartbeat still for 5 ticks, terminates B's
    session and takes its accounts, never before. B's lease lapsed a tick earlier (4 ticks),
    so woken it acts on nothing; it finds its session gone, gives its accounts up without
    re-locking them, and re-joins: A hands it a share through the normal rebalance."""
    ns = namespace()
    ca, cb = ManualClock(), ManualClock()
    async with on_clock(ns, "a", ca) as a, on_clock(ns, "b", cb) as b:
        await step_both(ca, cb, 8)
        assert balanced([a, b]) and a.owned() and b.owned()
        assert acting(a) == a.owned() and acting(b) == b.owned()
        stopped = b.owned()
        # B is stopped here. A's first tick still sees B's last heartbeat move.
        await step(ca, 5)
        assert a.owned().isdisjoint(stopped), "taken before B was 5 ticks quiet"
        assert held_by("guardbot:b") == 1 + len(stopped), "B's session is still there"
        await step(ca)
        assert a.owned() == frozenset(ACCOUNTS)
        assert held_by("guardbot:b") == 0, "B's session was terminated"
        # B wakes 6 s later by its clock: its lease (4 s) lapsed before A could take over.
        cb.advance(6.0)
        assert b.owned() == stopped and acting(b) == frozenset()
        await until(lambda: cb.next_wakeup() is not None)
        assert b.owned() == frozenset(), "it let go of what it lost"
        overlaps: list[frozenset[str]] = []
        for _ in range(6):
            await step(cb)
            await step(ca)
            overlaps.append(acting(b) & a.owned())
        assert not any(overlaps)
        assert balanced([a, b]) and b.owned() and acting(b) == b.owned()


class TerminatesLate(AccountOwnership):
    """An instance that runs ``meanwhile`` (once) after its tick decided a peer is stale
    and before its ``pg_terminate_backend`` reaches the server: the window in which the
    stale peer may wake and run a tick of its own."""

    meanwhile: Callable[[], Any] | None = None

    async def _terminate(self, conn: Any, pid: int, now: float) -> bool:
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return await super()._terminate(conn, pid, now)


@pytest.mark.postgres
async def test_a_peer_woken_just_before_its_termination_does_not_act_with_the_taker() -> None:
    """B is stopped past its lease; A's tick sees it stale, and B wakes and ticks before
    A's termination lands. B's session is still alive for that tick, so it succeeds, but
    it must not renew B's lease: A terminates B and takes its accounts in the same tick,
    and the two would both act on them until B noticed its session was gone."""
    ns = namespace()
    ca, cb = ManualClock(), ManualClock()
    taker = TerminatesLate(PG_URL, "a", ACCOUNTS, namespace=ns, clock=ca)
    async with taker as a, on_clock(ns, "b", cb) as b:
        await step_both(ca, cb, 8)
        assert balanced([a, b]) and b.owned()
        stopped = b.owned()
        await step(ca, 5)
        assert a.owned().isdisjoint(stopped)

        async def b_wakes() -> None:
            cb.advance(6.0)  # past its lease: the wake-up tick runs now
            await until(lambda: cb.next_wakeup() is not None)

        taker.meanwhile = b_wakes
        await step(ca)
        assert taker.meanwhile is None, "A decided B was stale"
        overlaps = [acting(a) & acting(b)]
        for _ in range(3):  # until B has noticed its session is gone
            await step(cb)
            overlaps.append(acting(a) & acting(b))
        assert not any(overlaps), [len(o) for o in overlaps]
        await step(ca)
        # Every account is guarded by exactly one of them, on B's new session or by A.
        assert balanced([a, b]) and not acting(a) & acting(b)
        assert acting(a) == a.owned() and acting(b) == b.owned()


@pytest.mark.postgres
async def test_a_short_stop_within_the_lease_keeps_the_accounts() -> None:
    """Stopped for less than the lease, an instance wakes owning and acting as before: a
    pause (a long GC, a busy loop) is not a take-over."""
    ns = namespace()
    ca, cb = ManualClock(), ManualClock()
    async with on_clock(ns, "a", ca) as a, on_clock(ns, "b", cb) as b:
        await step_both(ca, cb, 8)
        assert balanced([a, b])
        mine = b.owned()
        await step(ca, 3)
        cb.advance(3.5)
        assert acting(b) == mine
        await until(lambda: cb.next_wakeup() is not None)
        await step(ca, 3)
        await step(cb)
        assert b.owned() == mine and acting(b) == mine and a.owned().isdisjoint(mine)


@pytest.mark.postgres
async def test_a_peer_waits_out_the_hold_of_an_instance_that_was_alone() -> None:
    """A lone instance keeps acting through a database outage for hold_s (it cannot tell
    the outage from being cut off). It says so with its alone marker, so a peer started
    while it is cut off (here: stopped) waits hold_s on top of the 5 ticks before it
    terminates it; by then the lone one's hold is over as well."""
    ns = namespace()
    ca, cb = ManualClock(), ManualClock()
    async with on_clock(ns, "a", ca, hold_s=10.0) as a:
        await step(ca, 6)
        assert a.owned() == frozenset(ACCOUNTS) and a.live_instances == 1
        async with on_clock(ns, "b", cb, hold_s=10.0) as b:
            # B first saw A's heartbeat as it entered: A is stale 5 + 10 ticks after that.
            await step(cb, 5 + 10 - 1)
            assert b.owned() == frozenset(), "a lone holder is given its hold first"
            assert held_by("guardbot:a") == 2 + len(ACCOUNTS)  # member, alone, accounts
            await step(cb)
            assert b.owned() == frozenset(ACCOUNTS)
            ca.advance(16.0)
            assert acting(a) == frozenset()


# -- PostgreSQL, real processes killed with SIGKILL ---------------------------------------


class Child:
    """``python -m guardbot.ownership`` in a subprocess; reads its JSON change lines: what
    it owns (``changed_at``: when that last changed, by its clock) and what ``may_act``
    allows (``acting``), every line kept in ``history``."""

    def __init__(
        self, ns: str, name: str, interval_s: float | None, accounts: list[str] = ACCOUNTS
    ) -> None:
        env = dict(os.environ, GUARDBOT_OWNERSHIP_NAMESPACE=ns)
        if interval_s is not None:  # None: the default of the guardbot it runs
            env["GUARDBOT_OWNERSHIP_INTERVAL_S"] = str(interval_s)
        # ``-m`` looks in the working directory first: start in the tree whose guardbot this
        # process imports (benchmarks/failover.py --compare imports another revision's).
        tree = Path(ownership.__file__).resolve().parents[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "guardbot.ownership", PG_URL, name, *accounts],
            stdout=subprocess.PIPE,
            env=env,
            cwd=tree,
            text=True,
        )
        self.owned: frozenset[str] = frozenset()
        self.acting: frozenset[str] = frozenset()
        self.changed_at = 0.0
        self.history: list[tuple[float, frozenset[str], frozenset[str]]] = []

    def poll(self) -> None:
        """Read whatever lines are ready without blocking."""
        assert self.process.stdout is not None
        while select.select([self.process.stdout], [], [], 0)[0]:
            line = self.process.stdout.readline()
            if not line:
                return
            change = json.loads(line)
            # A guardbot without may_act (benchmarks/failover.py --compare) acts on all it owns.
            owned = frozenset(change["owned"])
            acting = frozenset(change.get("acting", change["owned"]))
            if owned != self.owned:
                self.changed_at = change["t"]
            self.owned, self.acting = owned, acting
            self.history.append((change["t"], owned, acting))

    def owned_at(self, t: float) -> frozenset[str]:
        """What it owned at ``t`` (by its last line up to then)."""
        owned: frozenset[str] = frozenset()
        for at, was, _ in self.history:
            if at > t:
                break
            owned = was
        return owned


def covered(group: list[Child]) -> bool:
    """Every account is owned by exactly one of ``group`` (reading their latest lines)."""
    for child in group:
        child.poll()
    sets = [c.owned for c in group]
    return set().union(*sets) == set(ACCOUNTS) and sum(map(len, sets)) == len(ACCOUNTS)


@pytest.mark.postgres
async def test_sigkilled_process_accounts_are_taken_over_within_seconds() -> None:
    ns = namespace()
    children = [Child(ns, f"p{i}", interval_s=0.5) for i in range(3)]
    try:
        await until(lambda: covered(children) and all(c.owned for c in children), 15.0)
        victim, survivors = children[0], children[1:]
        orphaned = victim.owned
        victim.process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        victim.process.wait()
        await until(lambda: covered(survivors), 10.0)
        failover_s = max(c.changed_at for c in survivors) - killed_at
        assert orphaned <= survivors[0].owned | survivors[1].owned
        assert failover_s < 10.0, failover_s
    finally:
        for child in children:
            child.process.kill()
            child.process.wait()


@pytest.mark.postgres
async def test_a_sigstopped_process_loses_its_accounts_within_10_s_and_rejoins_cleanly() -> None:
    """Two processes on the default tick; one is stopped with SIGSTOP (its session stays
    open, so its locks stay held): the other guards every account within 10 s. Continued
    with SIGCONT, the stopped one never acts on an account its peer holds, finds its
    session terminated, reconnects and gets a share back only through the rebalance."""
    ns = namespace()
    children = [Child(ns, f"s{i}", ownership.DEFAULT_INTERVAL_S) for i in range(2)]
    victim, survivor = children
    try:
        await until(lambda: covered(children) and all(c.owned for c in children), 20.0)
        victim.process.send_signal(signal.SIGSTOP)
        stopped_at = time.time()
        await until(lambda: covered([survivor]), 12.0)
        failover_s = survivor.changed_at - stopped_at
        assert failover_s < 10.0, failover_s
        victim.process.send_signal(signal.SIGCONT)
        await until(lambda: covered(children) and all(c.acting for c in children), 15.0)
        woken = [(t, owned, acts) for t, owned, acts in victim.history if t > stopped_at]
        assert woken and woken[0][2] == frozenset(), "it acted on waking"
        for t, _, acts in woken:
            assert acts.isdisjoint(survivor.owned_at(t)), (t, acts)
    finally:
        for child in children:
            child.process.send_signal(signal.SIGCONT)
            child.process.kill()
            child.process.wait()


@pytest.mark.postgres
async def test_a_peer_takes_an_account_only_after_the_giver_finished_releasing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon finishes its work on a given-away account (queued actions, calls on the
    wire, reconciles that wait a read timeout) inside ``on_change``; the lock must outlive
    that work, however long it takes, or two guards could act on one position. The release
    here outlasts many ticks and the tick's own time limit (shortened to keep this fast)."""
    monkeypatch.setattr(ownership, "_TICK_TIMEOUT_S", 0.5)
    ns = namespace()
    released_at: dict[str, float] = {}
    slow_s = 10 * FAST + 0.5  # past the tick limit: a cancelled release would drop the locks

    async def slow_release(owned: frozenset[str]) -> None:
        given_away = [a for a in ACCOUNTS if a not in owned and a not in released_at]
        if given_away and len(owned) < len(ACCOUNTS):
            await asyncio.sleep(slow_s)
            for account in given_away:
                released_at[account] = time.monotonic()

    async with pg_instance(ns, "giver", on_change=slow_release) as giver:
        await until(lambda: giver.owned() == frozenset(ACCOUNTS))
        taken_at: dict[str, float] = {}
        async with pg_instance(ns, "taker") as taker:
            deadline = time.monotonic() + 10
            while not balanced([giver, taker]):
                for account in taker.owned():
                    taken_at.setdefault(account, time.monotonic())
                await asyncio.sleep(FAST / 5)
                assert time.monotonic() < deadline, "the accounts were never rebalanced"
            for account in taker.owned():
                taken_at.setdefault(account, time.monotonic())
    assert taken_at, "the taker got its share"
    for account, at in taken_at.items():
        assert account in released_at and released_at[account] <= at, account


def _kill_session(application_name: str) -> None:
    with psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid, 1000) FROM pg_stat_activity"
            " WHERE application_name = %s",
            (application_name,),
        )


@pytest.mark.postgres
async def test_an_instance_back_after_its_lease_lapsed_does_not_relock_what_a_peer_took() -> None:
    """A is cut off from the database (its session ends, reconnects fail) past its lease:
    it stops acting, and B takes A's accounts once A is stale. B's session then ends too
    (an admin kill, a server restart) while B is inside its lease and cannot reconnect at
    once: B keeps acting on all of them until its lease lapses. A, reconnected meanwhile,
    must not take them back on sight: a new instance would wait stale_ticks for an account
    nobody holds, which outlasts B's lease. (Review finding: A re-locked the accounts it
    held before its outage at once, and both acted on them.)"""
    ns = namespace()
    ca, cb = ManualClock(), ManualClock()
    async with on_clock(ns, "a", ca, hold_s=0.0) as a, on_clock(ns, "b", cb, hold_s=0.0) as b:
        await step_both(ca, cb, 8)
        assert balanced([a, b]) and a.owned() and b.owned()
        first = a.owned()
        good = a._conninfo
        a._conninfo = good.replace("127.0.0.1:5432", "127.0.0.1:1")
        _kill_session("guardbot:a")
        await step_both(ca, cb, 8)  # A fails for 8 ticks, B takes everything
        assert a.owned() == frozenset() and acting(a) == frozenset()
        assert b.owned() == frozenset(ACCOUNTS) and acting(b) == frozenset(ACCOUNTS)
        b._conninfo = good.replace("127.0.0.1:5432", "127.0.0.1:1")
        _kill_session("guardbot:b")
        await step(cb)  # B notices within its lease: keeps acting while it reconnects
        assert acting(b) == frozenset(ACCOUNTS)
        a._conninfo = good
        overlaps = []
        for _ in range(4):
            await step(ca)
            overlaps.append(acting(a) & acting(b))
            await step(cb)
            overlaps.append(acting(a) & acting(b))
        assert not any(overlaps), [len(o) for o in overlaps]
        assert first  # A's old accounts were the ones at stake
