"""Which guardbot process guards which account (docs/architecture.md, "Invariants": one
guard per account).

Several ``guardbot run`` processes configured with the same accounts and the same PostgreSQL
audit database divide the accounts between them so that each account is guarded by exactly
one live process::

    async with AccountOwnership(db_url, instance_id, account_ids) as own:
        while True:
            guard(own.owned())            # frozenset of account ids this process guards
            await own.wait_changed()      # or pass on_change=... to the constructor
        ...
        if own.may_act(account_id):       # right before every call to the exchange
            send()

How (no home-made consensus; PostgreSQL's lock manager and activity view do the work):

* Each instance holds one dedicated connection. On it, it takes a session advisory lock for
  its own ``instance_id`` (membership) and one per account it guards. Session advisory locks
  belong to the connection, so the server releases all of them the moment the process dies
  (its socket closes), or when the session is terminated.
* Every ``interval_s`` (a tick, 1 s by default) the instance reads ``pg_locks`` once, joined
  with ``pg_stat_activity`` for the sessions holding the locks: the live instances are the
  membership locks, the owners are the account locks, and each holder's
  ``(backend_start, state_change)`` is its heartbeat. A live instance runs its tick queries
  on that session every interval, so ``state_change`` moves at least once per tick. It then
  balances: it owns at most ``ceil(accounts / live instances)``, releases its extras when a
  peer appears and takes accounts a live peer released at once, with
  ``pg_try_advisory_lock``, which cannot succeed for two sessions at once.
* A hung peer (SIGSTOP, a starved process, a host lost behind a TCP session the server
  still thinks is open) keeps its locks but stops moving its heartbeat. A peer whose
  heartbeat this instance has seen unchanged for ``stale_ticks`` intervals (5) of its own
  monotonic clock is stale: this instance ends its session with ``pg_terminate_backend``
  (waiting up to 1 s for it to be gone), which releases its locks, and takes its accounts in
  the same tick. An account nobody holds is taken under the same rule: once its last holder's
  heartbeat has been still for ``stale_ticks`` intervals (for a SIGKILLed process, counted
  from its last query before it died), or, if this session never saw a holder, once the
  account has been free that long.
* Lease: an instance may act on an account (``may_act``) only while it owns it and its last
  successful tick *started* less than ``lease_ticks`` intervals (4) ago. Every heartbeat a
  peer sees comes from a query sent after that start, so no peer can take an account sooner
  than ``stale_ticks`` intervals after it: the lease lapses one interval before any take-over
  can happen, however long the process was stopped, and whatever ended its session. The
  executor checks ``may_act`` as each call leaves its queue; that one interval is the margin
  for the call's way out (its audit record, the rate limiter's wait); it is asked again once
  the call's SENT record is written. A tick that starts after the lease lapsed renews
  nothing, even if the session still answers: a peer may have judged it stale on an earlier
  snapshot and be terminating it. The instance closes that session and re-locks its
  accounts on a new one at the next tick. A process frozen between the last check and the
  socket write can still send that one call when it wakes: the exchange has no fencing
  token that could refuse it.
* Why these means: TCP keepalive only notices a host that stopped answering the network
  (and only after tens of seconds), never a stopped process whose kernel still answers.
  Statement, lock or idle-session timeouts end a session only while it runs a statement or
  sits in a transaction, or after one fixed idle time for everybody; they cannot tell a
  hung peer from a slow one, and a woken instance would still believe it owned its accounts.
  The heartbeat is what the server already records for every session, the termination is
  the server's own, and the lease is what stops the woken side.
* Timing (interval T = 1 s): a stopped or killed peer's last heartbeat is up to T old when
  it stops, and peers tick with any phase, so failover takes between 4 and 6 s
  (``benchmarks/failover.py``); a rebalance one or two T. A live instance must run no tick
  for 4 T (event loop starved, database slower than the lease) before it stops acting, and
  for 5 T before a peer takes over; a false take-over hands accounts over cleanly (the lease
  lapsed first), it never leaves two guards acting.
* An account being given away is first removed from ``owned()`` (and ``on_change`` awaited),
  and only unlocked on the next tick, so the caller has stopped guarding it before a peer
  can start. While ``on_change`` runs (it may wait on calls on the wire), a ``SELECT 1``
  every interval keeps the heartbeat moving and renews the lease on the accounts we keep.
* The database may go away (an outage, a restart). With peers, an instance cannot tell an
  outage from being cut off alone (the peers then take over after ``stale_ticks``), so it
  stops acting when its lease lapses; it keeps its accounts in ``owned()`` until then and
  re-locks them at once if the database is back by then. Back later, it takes free accounts
  as a new instance does (after ``stale_ticks``): a peer may have taken them meanwhile and
  still be acting inside its own lease though its session ended too. An instance that saw
  itself alone holds a marker lock saying so: it keeps acting for ``hold_s`` (40 s) through
  an outage, and a peer that appears meanwhile waits ``hold_s`` more before it terminates
  an alone holder. If this host is cut off while the server lives on, the server keeps our
  session for
  ``_SERVER_GIVES_UP_S`` (keepalive), longer than ``hold_s`` plus one failed attempt, so a
  peer with no history of us cannot take over before we stop either. A loss first noticed
  after the lease (or hold) lapsed (this process was stopped) is not re-locked: the instance
  re-joins like a new one.
* Roles: peers must see each other's ``pg_stat_activity`` rows (the same role, or
  ``pg_read_all_stats``) and may terminate them (the same role, or ``pg_signal_backend``);
  without that a hung peer is never declared stale (logged). PostgreSQL 14 or later.

With SQLite there is one instance: it owns every account, ``may_act`` is ownership, and an
exclusive ``flock`` on ``<database>.lock`` (``audit.database.SqliteLock``) makes a second
process on the same file fail at start-up, naming the process that holds it.

``python -m guardbot.ownership DB_URL INSTANCE_ID ACCOUNT...`` runs one instance and prints
a JSON line on every change of what it owns or may act on (used by the failover tests and
``benchmarks/failover.py``).
"""

# Size (about 600 lines, AccountOwnership about 470): one lock protocol on one dedicated
# connection. Membership, heartbeats, balancing, the lease, holding on through an outage and
# re-locking share the connection and its timing state; split up, the timing argument above
# (the lease against a peer's stale wait, hold_s against the server's keepalive) would no
# longer be checkable in one place.

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import math
import os
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from guardbot.audit.database import DatabaseInUse, SqliteLock, sqlite_file
from guardbot.audit.errors import first_line
from guardbot.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

OnChange = Callable[[frozenset[str]], Awaitable[None] | None]

DEFAULT_INTERVAL_S = 1.0
# A peer whose heartbeat has not moved for this many intervals is stale (terminated, its
# accounts taken); an instance acts only within this many intervals of its last good tick.
STALE_TICKS = 5
LEASE_TICKS = 4
# How long pg_terminate_backend waits for a stale peer's session to be gone.
_TERMINATE_WAIT_MS = 1000
# A tick that takes longer than this is treated as a lost connection.
_TICK_TIMEOUT_S = 5.0
# The server gives up on a silent client after idle + interval * count seconds and only then
# releases its locks. Holding on through an outage (hold_s) plus one failed attempt
# (interval_s + _TICK_TIMEOUT_S) must stay below this plus a peer's takeover wait.
_KEEPALIVE_OPTIONS = (
    "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=4"
)
_SERVER_GIVES_UP_S = 30 + 5 * 4
DEFAULT_HOLD_S = 40.0

# Advisory locks taken with two int4 keys appear in pg_locks as (classid, objid, objsubid=2).
# The holder's heartbeat is read from pg_stat_activity (NULL when this role may not see it).
_SNAPSHOT_SQL = """
SELECT l.classid::bigint, l.objid::bigint, l.pid, l.pid = pg_backend_pid(),
       a.backend_start, a.state_change
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint IN (%s, %s, %s)
"""

Heartbeat = tuple[datetime, datetime]


class OwnershipError(Exception):
    """Ownership cannot be established: fix the database URL or the instance id."""


def _lock_key(text: str) -> int:
    """A stable non-negative int4 (pg_locks shows the key as an unsigned oid)."""
    digest = hashlib.blake2b(text.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


@dataclass(slots=True)
class _Seen:
    """What this session saw of one peer session: its heartbeat, since when (our monotonic
    clock) it has not moved, and whether it held the alone marker."""

    heartbeat: Heartbeat | None
    since: float
    alone: bool


class AccountOwnership:
    """Divides ``account_ids`` among the live guardbot instances sharing ``db_url``.

    ``db_url`` is the SQLAlchemy URL of the audit database (``postgresql+psycopg://...`` or
    ``sqlite:///...``). ``instance_id`` must be unique among live instances. Instances only
    cooperate when they share ``namespace`` (tests use it to stay apart). ``on_change`` is
    called (and awaited if it returns an awaitable) with the new owned set after every
    change; when it returns, the caller must have stopped acting on accounts that left it.
    ``hold_s`` is how long a lone instance keeps acting while the database is unreachable.
    A peer is stale after ``stale_ticks`` intervals without a heartbeat; this instance acts
    only within ``lease_ticks`` intervals (fewer) of its last good tick. Ticks, leases and
    take-over waits run on ``clock``.
    """

    def __init__(
        self,
        db_url: str,
        instance_id: str,
        account_ids: Iterable[str],
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        namespace: str = "guardbot",
        on_change: OnChange | None = None,
        hold_s: float = DEFAULT_HOLD_S,
        stale_ticks: int = STALE_TICKS,
        lease_ticks: int = LEASE_TICKS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if not 0 < lease_ticks < stale_ticks:
            raise ValueError(
                "lease_ticks must be positive and below stale_ticks, or a peer could take an"
                " account over while this instance still acts on it"
            )
        if not 0 <= hold_s <= _SERVER_GIVES_UP_S - interval_s - _TICK_TIMEOUT_S:
            raise ValueError(
                f"hold_s must be between 0 and {_SERVER_GIVES_UP_S - interval_s - _TICK_TIMEOUT_S}"
                " s, or the server could hand our accounts to a peer while we still guard them"
            )
        try:
            url = make_url(db_url)
        except ArgumentError:
            raise OwnershipError("the audit database URL is not a valid SQLAlchemy URL") from None
        self._backend = url.get_backend_name()
        if self._backend not in ("postgresql", "sqlite"):
            raise OwnershipError(
                f"account ownership needs PostgreSQL or SQLite, not {self._backend}"
            )
        # psycopg takes the libpq form of the URL; it is never logged (it may hold a password).
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._sqlite_path = sqlite_file(db_url)
        self.instance_id = instance_id
        self._accounts = {
            account: _lock_key(f"{namespace}/account/{account}")
            for account in sorted(set(account_ids))
        }
        by_key: dict[int, str] = {}
        for account, key in self._accounts.items():
            if key in by_key:
                raise OwnershipError(
                    f"accounts {by_key[key]} and {account} hash to the same lock key in"
                    f" namespace {namespace!r}: choose another namespace"
                )
            by_key[key] = account
        self._account_of_key = by_key
        # Rendezvous hashing: each instance prefers a different subset, so peers rarely
        # race for the same account and a rebalance moves few accounts.
        self._preference = {a: _lock_key(f"{instance_id}/{a}") for a in self._accounts}
        self._accounts_ns = _lock_key(f"{namespace}/accounts")
        self._members_ns = _lock_key(f"{namespace}/instances")
        # Held (key: our member key) while our last tick saw no other live instance.
        self._alone_ns = _lock_key(f"{namespace}/alone")
        self._member_key = _lock_key(f"{namespace}/instance/{instance_id}")
        self._namespace = namespace
        self._interval_s = interval_s
        self._stale_s = stale_ticks * interval_s
        self._lease_s = lease_ticks * interval_s
        self._hold_s = hold_s
        self._clock = clock
        self._on_change = on_change
        self._notify_due = False
        self._owned: frozenset[str] = frozenset()
        # Accounts we held when the connection was lost: re-locked first when it is back.
        self._held_before: frozenset[str] = frozenset()
        self._unheld_since: dict[str, float] = {}
        self._last_holder: dict[str, int] = {}  # account -> backend pid last seen holding it
        self._seen: dict[int, _Seen] = {}  # peer backend pid -> its heartbeat as we saw it
        self._hidden_warned = False
        # When the last successful tick started (our monotonic clock): the lease's start.
        self._last_tick = 0.0
        # Whether our session holds the alone marker (as of the last tick that changed it).
        self._alone = False
        self._releasing: set[str] = set()
        self._live_instances = 0
        self._changed = asyncio.Event()
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._sqlite_lock: SqliteLock | None = None

    # -- public API -------------------------------------------------------------------

    def owned(self) -> frozenset[str]:
        """The accounts this instance guards right now."""
        return self._owned

    def may_act(self, account_id: str) -> bool:
        """Whether a call on ``account_id`` may leave now: the account is owned and this
        instance's claim is confirmed recently enough that no peer can have taken it over
        (the lease). Ask right before each call; the answer changes with time alone."""
        if account_id not in self._owned:
            return False
        return self._backend == "sqlite" or not self._lapsed(self._clock.monotonic())

    @property
    def live_instances(self) -> int:
        """Live instances (this one included) seen at the last tick."""
        return self._live_instances

    async def wait_changed(self) -> frozenset[str]:
        """Wait for the next change of ``owned()`` and return the new set."""
        await self._changed.wait()
        return self._owned

    async def __aenter__(self) -> AccountOwnership:
        if self._backend == "sqlite":
            self._lock_sqlite()
            self._live_instances = 1
            await self._set_owned(frozenset(self._accounts))
            await self._notify()
            return self
        try:
            async with asyncio.timeout(_TICK_TIMEOUT_S):
                started = self._clock.monotonic()
                await self._connect()
                await self._tick()
                self._last_tick = started
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self._drop_connection()
            raise OwnershipError("cannot reach the audit database for account ownership: "
                                 f"{first_line(exc, named=True)}") from None
        await self._notify()
        self._task = asyncio.create_task(self._run(), name=f"ownership:{self.instance_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._set_owned(frozenset())
        await self._notify()
        await self._drop_connection()  # closing the session releases every lock at once
        if self._sqlite_lock is not None:
            self._sqlite_lock.close()
            self._sqlite_lock = None

    # -- internals ----------------------------------------------------------------------

    def _acting_limit_s(self) -> float:
        """How long after the start of the last good tick we may act: the lease, or
        ``hold_s`` if that tick saw us alone (a peer then waits ``hold_s`` longer)."""
        return max(self._lease_s, self._hold_s) if self._alone else self._lease_s

    def _lapsed(self, now: float) -> bool:
        """Has our acting limit run out since the last good tick? Then a peer may already
        have decided we are stale, and only a new session may claim accounts again."""
        return now - self._last_tick >= self._acting_limit_s()

    def _lock_sqlite(self) -> None:
        if self._sqlite_path is None:
            return
        try:
            self._sqlite_lock = SqliteLock(self._sqlite_path)
        except DatabaseInUse as exc:
            raise OwnershipError(str(exc)) from None

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._interval_s)
            # Before anything is sent: every heartbeat a peer sees from this attempt is
            # younger than this, so the lease counted from here lapses before a take-over.
            started = self._clock.monotonic()
            try:
                async with asyncio.timeout(_TICK_TIMEOUT_S):
                    if self._conn is not None and self._lapsed(started):
                        # Re-locked on a new session next tick (by then the old backend
                        # has exited and let our membership lock go).
                        await self._rejoin(started)
                    else:
                        if self._conn is None:
                            await self._connect()
                            await self._relock()
                        await self._tick()
                        self._last_tick = started
            except (psycopg.Error, OSError, TimeoutError, OwnershipError) as exc:
                await self._lost(exc)
            # Outside the tick's time limit: the caller's release of what we gave away may
            # take as long as it takes (calls on the wire, reconciles), and the next tick,
            # which unlocks those accounts, starts only after it.
            await self._notify_beating()

    async def _notify_beating(self) -> None:
        """``_notify``, with a heartbeat every interval while it runs: a release that waits
        on calls on the wire must neither look like a hung instance to our peers nor let
        the lease lapse on the accounts we keep."""
        notifying = asyncio.create_task(self._notify())
        try:
            while True:
                done, _ = await asyncio.wait({notifying}, timeout=self._interval_s)
                if done:
                    return
                await self._heartbeat()
        finally:
            if not notifying.done():
                notifying.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await notifying

    async def _heartbeat(self) -> None:
        """One query on the lock session. Its success proves the session, and with it every
        lock we hold, was alive after ``started``: the lease counts from there. A failure
        is left to the next tick, which handles a lost connection."""
        conn = self._conn
        if conn is None:
            return
        started = self._clock.monotonic()
        if self._lapsed(started):
            return  # left to the next tick, which re-joins (see _run)
        try:
            async with asyncio.timeout(_TICK_TIMEOUT_S):
                await conn.execute("SELECT 1")
        except (psycopg.Error, OSError, TimeoutError):
            return
        self._last_tick = started

    async def _rejoin(self, now: float) -> None:
        """This process was stopped or starved past its acting limit, and its session
        looks alive. A peer may have decided it is stale on a snapshot taken before this
        tick and be terminating it right now: a tick that still succeeds on that session
        proves nothing, and renewing the lease from it would let both act once the
        termination lands. Close it ourselves and re-lock on a new session, which no peer
        can have judged stale: whatever a peer took meanwhile is simply not ours any more.
        (``may_act`` was false already: the lease has lapsed.)"""
        log.warning(
            "ownership %s: no good tick for %.1f s (this process was stopped or starved):"
            " re-locking its %d accounts on a new session",
            self.instance_id,
            now - self._last_tick,
            len(self._owned),
        )
        self._held_before |= self._owned
        await self._drop_connection()
        await self._set_owned(frozenset())

    async def _lost(self, exc: BaseException) -> None:
        """The lock connection failed. Noticed within our acting limit: keep what we own
        (acting on it while the limit lasts) and re-lock it when the database is back.
        Noticed later (this process was stopped or starved): a peer may have taken it
        over already, so let go at once and re-join like a new instance."""
        late = self._lapsed(self._clock.monotonic())
        if self._conn is not None:
            await self._drop_connection()
            if late:
                log.warning(
                    "ownership %s: lock connection lost (%s), noticed %.1f s after the last"
                    " good tick: this instance was stopped or starved and peers may have"
                    " taken its accounts; giving up %d accounts and re-joining",
                    self.instance_id,
                    first_line(exc, named=True),
                    self._clock.monotonic() - self._last_tick,
                    len(self._owned),
                )
            else:
                log.warning(
                    "ownership %s: lock connection lost (%s); still guarding %d accounts for"
                    " up to %g s while reconnecting",
                    self.instance_id,
                    first_line(exc, named=True),
                    len(self._owned),
                    self._acting_limit_s(),
                )
                self._held_before |= self._owned
        if self._owned and late:
            log.warning(
                "ownership %s: no lock database for %.0f s: guarding nothing until it is back",
                self.instance_id,
                self._clock.monotonic() - self._last_tick,
            )
            await self._set_owned(frozenset())
        if late:
            # Past our acting limit a peer may have taken them, and its session may be gone
            # too while it still acts inside its own lease: taken back only as a new
            # instance takes a free account (after stale_ticks), never at once on sight.
            self._held_before = frozenset()

    async def _relock(self) -> None:
        """Right after reconnecting, take back the accounts we held before the loss (the new
        session holds nothing). One taken by a peer meanwhile is simply not ours any more."""
        conn = self._conn
        assert conn is not None
        regained = set()
        for account in sorted(self._held_before):
            cursor = await conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (self._accounts_ns, self._accounts[account])
            )
            row = await cursor.fetchone()
            if row and row[0]:
                regained.add(account)
        self._held_before = frozenset()
        await self._set_owned(frozenset(regained))

    async def _connect(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=int(_TICK_TIMEOUT_S),
            application_name=f"guardbot:{self.instance_id}"[:63],
            options=_KEEPALIVE_OPTIONS,
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )
        if conn.info.server_version < 140000:
            await conn.close()
            raise OwnershipError("account ownership needs PostgreSQL 14 or later")
        cursor = await conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", (self._members_ns, self._member_key)
        )
        row = await cursor.fetchone()
        if not row or not row[0]:
            await conn.close()
            raise OwnershipError(
                f"instance id {self.instance_id!r} is already live in namespace"
                f" {self._namespace!r}: give every guardbot process its own instance id"
            )
        self._conn = conn
        self._alone = False  # a new session: it holds no marker yet

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._releasing.clear()  # the server releases them with the session
        # What we saw on that session says nothing about the next one.
        self._unheld_since.clear()
        self._last_holder.clear()
        self._seen.clear()
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    async def _tick(self) -> None:
        conn = self._conn
        assert conn is not None
        # Accounts given away last tick: the caller has stopped guarding them by now.
        for account in sorted(self._releasing):
            await conn.execute(
                "SELECT pg_advisory_unlock(%s, %s)", (self._accounts_ns, self._accounts[account])
            )
        self._releasing.clear()

        cursor = await conn.execute(
            _SNAPSHOT_SQL, (self._accounts_ns, self._members_ns, self._alone_ns)
        )
        held_by_me: set[str] = set()
        held: dict[str, int] = {}  # account -> holder pid
        members: dict[int, Heartbeat | None] = {}
        marked: set[int] = set()
        me: int | None = None
        for classid, objid, pid, mine, backend_start, state_change in await cursor.fetchall():
            if classid == self._members_ns:
                members[pid] = None if state_change is None else (backend_start, state_change)
                if mine:
                    me = pid
            elif classid == self._alone_ns:
                marked.add(pid)
            elif (locked := self._account_of_key.get(objid)) is not None:
                held[locked] = pid
                self._last_holder[locked] = pid
                if mine:
                    held_by_me.add(locked)
        if me is None:
            raise OwnershipError("our membership lock is gone")
        now = self._clock.monotonic()
        self._observe(members, marked, me, now)
        for pid in sorted(members):
            if pid != me and self._stale(pid, now) and await self._terminate(conn, pid, now):
                del members[pid]
                held = {a: p for a, p in held.items() if p != pid}
        live = len(members)
        self._live_instances = live
        await self._mark_alone(conn, live == 1)
        if held_by_me != self._owned:
            log.error(
                "ownership %s: the server says we hold %d accounts, we thought %d; trusting it",
                self.instance_id,
                len(held_by_me),
                len(self._owned),
            )

        for account in self._accounts:
            if account in held:
                self._unheld_since.pop(account, None)
            else:
                self._unheld_since.setdefault(account, now)
        owned = set(held_by_me)
        quota = math.ceil(len(self._accounts) / live)
        by_preference = sorted(self._accounts, key=self._preference.__getitem__, reverse=True)
        if len(owned) > quota:
            extras = [a for a in reversed(by_preference) if a in owned][: len(owned) - quota]
            owned.difference_update(extras)
            self._releasing.update(extras)
        else:
            for account in by_preference:
                if len(owned) >= quota:
                    break
                if account in held or not self._free(account, now, members.keys()):
                    continue
                cursor = await conn.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)",
                    (self._accounts_ns, self._accounts[account]),
                )
                row = await cursor.fetchone()
                if row and row[0]:
                    owned.add(account)
        await self._set_owned(frozenset(owned))

    def _observe(
        self, members: dict[int, Heartbeat | None], marked: set[int], me: int, now: float
    ) -> None:
        """Note every peer's heartbeat: a moved one (or one we cannot see) restarts its
        quiet time. Peers that are gone stay noted while an account remembers them."""
        for pid, heartbeat in members.items():
            if pid == me:
                continue
            seen = self._seen.get(pid)
            if heartbeat is None and not self._hidden_warned:
                self._hidden_warned = True
                log.warning(
                    "ownership %s: pg_stat_activity hides peer sessions from this role:"
                    " a hung peer cannot be detected and its accounts stay unguarded"
                    " (give the instances one role, or grant pg_read_all_stats)",
                    self.instance_id,
                )
            if seen is None or heartbeat is None or seen.heartbeat != heartbeat:
                self._seen[pid] = _Seen(heartbeat, now, pid in marked)
            else:
                seen.alone = pid in marked
        remembered = set(members) | set(self._last_holder.values())
        for pid in [p for p in self._seen if p not in remembered]:
            del self._seen[pid]

    def _stale(self, pid: int, now: float) -> bool:
        """Has this peer's heartbeat been still longer than it may act? (``hold_s`` more
        if it last said it was alone: it may be holding on through an outage.)"""
        seen = self._seen.get(pid)
        if seen is None:
            return False
        wait_s = self._stale_s + (self._hold_s if seen.alone else 0.0)
        return now - seen.since >= wait_s

    async def _terminate(
        self, conn: psycopg.AsyncConnection[tuple[Any, ...]], pid: int, now: float
    ) -> bool:
        """End a stale peer's session (which releases its locks); whether it is gone."""
        quiet_s = now - self._seen[pid].since
        log.warning(
            "ownership %s: peer session %d has run no query for %.1f s (hung or cut off):"
            " terminating it to take its accounts over",
            self.instance_id,
            pid,
            quiet_s,
        )
        try:
            cursor = await conn.execute(
                "SELECT pg_terminate_backend(%s, %s)", (pid, _TERMINATE_WAIT_MS)
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            log.error(
                "ownership %s: may not terminate peer session %d (%s): its accounts stay"
                " unguarded (give the instances one role, or grant pg_signal_backend)",
                self.instance_id,
                pid,
                first_line(exc),
            )
            self._seen[pid].since = now  # say it again in stale_ticks, not on every tick
            return False
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def _mark_alone(
        self, conn: psycopg.AsyncConnection[tuple[Any, ...]], alone: bool
    ) -> None:
        """Hold the alone marker exactly while we see no peer. ``_alone`` never claims more
        than the server holds: set only once the lock is taken, cleared before it is
        released (an unlock whose answer is lost leaves us believing the shorter limit)."""
        if alone and not self._alone:
            cursor = await conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (self._alone_ns, self._member_key)
            )
            row = await cursor.fetchone()
            self._alone = bool(row and row[0])
        elif not alone and self._alone:
            self._alone = False
            await conn.execute(
                "SELECT pg_advisory_unlock(%s, %s)", (self._alone_ns, self._member_key)
            )

    def _free(self, account: str, now: float, live_pids: Collection[int]) -> bool:
        """May we take this unheld account? Yes if a live peer let it go (a rebalance), or
        if its last holder has been quiet as long as a stale peer (gone, or terminated);
        one whose holder we never saw, once it has been free that long."""
        holder = self._last_holder.get(account)
        if holder is not None and holder in live_pids:
            return True
        if holder is not None and holder in self._seen:
            return self._stale(holder, now)
        return now - self._unheld_since[account] >= self._stale_s

    async def _set_owned(self, owned: frozenset[str]) -> None:
        if owned == self._owned:
            return
        gained, lost = owned - self._owned, self._owned - owned
        self._owned = owned
        log.info(
            "ownership %s: guarding %d of %d accounts (%d live instances); took %s, gave up %s",
            self.instance_id,
            len(owned),
            len(self._accounts),
            self._live_instances,
            sorted(gained),
            sorted(lost),
        )
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        self._notify_due = True  # on_change is awaited by _notify, outside any time limit

    async def _notify(self) -> None:
        """Await ``on_change`` with the current set, once per change. Never called under
        the tick's time limit (a cancelled release would drop the lock connection)."""
        if not self._notify_due or self._on_change is None:
            return
        self._notify_due = False
        try:
            result = self._on_change(self._owned)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("ownership %s: on_change callback failed", self.instance_id)


async def _print_changes(db_url: str, instance_id: str, accounts: list[str]) -> None:
    """Print ``{"t", "owned", "acting"}`` whenever what this instance owns, or may act on
    (``may_act``, looked at four times a tick), changes."""
    import json
    import time

    interval_s = float(os.environ.get("GUARDBOT_OWNERSHIP_INTERVAL_S", str(DEFAULT_INTERVAL_S)))
    namespace = os.environ.get("GUARDBOT_OWNERSHIP_NAMESPACE") or "guardbot"
    last: tuple[list[str], list[str]] | None = None

    def show(own: AccountOwnership) -> None:
        nonlocal last
        state = sorted(own.owned()), [a for a in sorted(own.owned()) if own.may_act(a)]
        if state != last:
            last = state
            print(json.dumps({"t": time.time(), "owned": state[0], "acting": state[1]}),
                  flush=True)  # fmt: skip

    holder: list[AccountOwnership] = []
    async with AccountOwnership(
        db_url, instance_id, accounts, interval_s=interval_s, namespace=namespace,
        on_change=lambda _owned: show(holder[0]) if holder else None,
    ) as own:  # fmt: skip
        holder.append(own)
        while True:
            show(own)
            await asyncio.sleep(interval_s / 4)


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 4:
        sys.exit("usage: python -m guardbot.ownership DB_URL INSTANCE_ID ACCOUNT...")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_print_changes(sys.argv[1], sys.argv[2], sys.argv[3:]))
