"""``guardbot run``: process wiring and lifecycle around the guard loop (``guardbot.guard``).

    config -> exchanges -> feeds (poller, streams) -> Guard (book -> policies -> arbiter
           -> executor) -> audit log

Everything long-lived is owned by one task group; SIGINT/SIGTERM set the stop event and the
group unwinds. Start-up and crash recovery are the same path: open the audit log (refusing
an out-of-date schema), load the symbol rules, reconcile the actions a previous run left
unfinished, poll every account, then start guarding. Budgets come from the audit log, so a
restart never resets them (docs/architecture.md, "Invariants").

An account whose key the exchange refuses (unregistered, revoked, expired) is reported once
by name (log line, ``key_refused`` alert, ``/readyz`` not ready) and retried with back-off
by the feeds; the other accounts are guarded all along, and it is again once its key works.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from guardbot import __version__, exits, metrics
from guardbot.alerts import Alert, Alerter, AlertKind
from guardbot.audit.ledger import utc_day_start_ms
from guardbot.audit.store import AuditError, AuditLog, SchemaOutOfDate
from guardbot.backoff import backoff
from guardbot.clock import SYSTEM_CLOCK, Clock
from guardbot.config import ConfigError, HealthSettings, Settings
from guardbot.exchange.errors import (
    AuthError,
    ExchangeError,
    MalformedResponse,
    Rejected,
    RetryLater,
    Unreachable,
)
from guardbot.exchange.port import Exchange
from guardbot.feeds.poller import Poller
from guardbot.feeds.streams import Streams
from guardbot.guard import Guard
from guardbot.health import AccountReadiness, HealthServer, Readiness
from guardbot.logs import name_accounts, register_secret
from guardbot.ownership import DEFAULT_INTERVAL_S as OWNERSHIP_INTERVAL_S
from guardbot.ownership import AccountOwnership, OwnershipError
from guardbot.policies.loader import LoadedPolicy
from guardbot.policies.loader import load_policies as _load_policies
from guardbot.preflight import check_settings, port_problem
from guardbot.telegram.bot import TelegramCommands

if TYPE_CHECKING:
    from guardbot.view.server import View
    from guardbot.view.state import LiveState

log = logging.getLogger(__name__)

# How often symbol rules (margin parameters, listings) are re-read, in seconds.
RULES_REFRESH_S = 600
# How long start-up keeps retrying an exchange that answers with transient failures.
STARTUP_PATIENCE_S = 60.0


class StartupError(Exception):
    """The guard cannot start; the message says what the operator must do, ``code`` is the
    exit code (``guardbot.exits``)."""

    def __init__(self, message: str, code: int = exits.FAILURE) -> None:
        super().__init__(message)
        self.code = code


def load_policies(settings: Settings) -> list[LoadedPolicy]:
    """The configured policies, validated (``ConfigError`` naming the key otherwise)."""
    return _load_policies(settings.policies, settings.guard.strategies_dir)


def describe_settings(settings: Settings) -> str:
    """A human summary of what would be guarded, without secrets."""
    lines = [
        _exchange_line(settings),
        f"audit: {_audit_url(settings.audit.url)}",
        f"dry-run: {'yes' if settings.guard.dry_run else 'no'}",
        _accounts_line(settings),
        "policies: " + (", ".join(p.label for p in settings.policies) or "topup (default)"),
    ]
    return "\n".join(lines)


def startup_banner(settings: Settings, policies: Sequence[LoadedPolicy]) -> list[str]:
    """The lines ``guardbot run`` logs once at start: version, LIVE or DRY-RUN, the exchange,
    the accounts by name, every policy with its parameters, the budgets. No secrets: the
    audit URL's password is masked and keys are not shown."""
    mode = ("DRY-RUN: decisions are recorded, no margin call is sent" if settings.guard.dry_run
            else "LIVE: margin calls are sent")
    budgets = settings.budgets
    lines = [
        f"guardbot {__version__} starting, {mode}",
        _exchange_line(settings),
        _accounts_line(settings),
        *(f"policy {_describe_policy(p)}" for p in policies),
        f"budgets (USDC): per action {budgets.per_action}, per position per day "
        f"{budgets.per_position_per_day}, per account per day {budgets.per_account_per_day}, "
        f"minimum {budgets.min_amount}, reserve {budgets.reserve}; cooldown "
        f"{budgets.cooldown_s:g} s",
        f"audit: {_audit_url(settings.audit.url)} (spool {settings.audit.spool_dir})",
    ]
    if settings.guard.kill_switch_file is not None:
        lines.append(f"kill switch: no new action while {settings.guard.kill_switch_file} exists")
    return lines


def _exchange_line(settings: Settings) -> str:
    urls = settings.exchange.urls()
    return (f"exchange: {settings.exchange.preset} (REST {urls['rest_url']}, public WebSocket "
            f"{urls['public_ws_url']}, private WebSocket {urls['private_ws_url']})")


def _accounts_line(settings: Settings) -> str:
    names = ", ".join(a.name for a in settings.accounts) or "none"
    return f"accounts ({len(settings.accounts)}): {names}"


def _audit_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL fails later, naming itself; never show a password
        return url.split("@")[-1]


def _describe_policy(loaded: LoadedPolicy) -> str:
    params = ", ".join(f"{k}={v}" for k, v in loaded.params.items()) or "defaults"
    declared = ", ".join(f"{name} {value}" for name in ("trigger", "add_target", "reduce_floor")
                         if (value := getattr(loaded, name)) is not None)
    where = []
    if loaded.accounts != ("*",):
        where.append("accounts " + ", ".join(loaded.accounts))
    if loaded.symbols != ("*",):
        where.append("symbols " + ", ".join(loaded.symbols))
    return (f"{loaded.label} ({loaded.policy.name}): {params}"
            + (f"; {declared}" if declared else "")
            + f"; {'; '.join(where) or 'every position'}")


def config_hash(settings: Settings) -> str:
    """A fingerprint of the configuration for the ``runs`` table (secrets are redacted by
    ``SecretStr`` in the dump, so the hash cannot leak them)."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


class Daemon:
    """One guard process over already-open exchanges and audit log (``run_daemon`` opens
    them): the guard, the feeds that drive it, housekeeping, ownership and readiness."""

    def __init__(
        self,
        settings: Settings,
        exchanges: Mapping[str, Exchange],
        audit: AuditLog,
        policies: Sequence[LoadedPolicy],
        *,
        account_names: Mapping[str, str] | None = None,
        owned: frozenset[str] | None = None,
        may_act: Callable[[str], bool] | None = None,
        notify: Callable[[Alert], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        public_stream: bool = True,
    ) -> None:
        self.settings = settings
        self.clock = clock
        name_accounts(account_names or {})
        # Per account, the sources (rest, private, public) whose last word was a refused key.
        self._key_refused: dict[str, dict[str, str]] = {}
        self.guard = Guard(settings, exchanges, audit, policies, account_names=account_names,
                           owned=owned, may_act=may_act, notify=notify, clock=clock)
        self.poller = Poller(
            exchanges, self.guard.on_snapshot, interval_s=settings.poll.interval_s,
            fast_interval_s=settings.poll.fast_interval_s, is_urgent=self.guard.is_urgent,
            clock=clock, on_key=self.on_key)  # fmt: skip
        self._public_stream = public_stream
        # Taking and giving away accounts never interleave (a take-over's reconcile must not
        # re-add an account given away meanwhile).
        self._ownership_lock = asyncio.Lock()
        # What people see of it (``live_state``; run_daemon sets it): the page, ``guardbot
        # top`` and chat commands read this one model.
        self.live: LiveState | None = None

    @property
    def exchanges(self) -> dict[str, Exchange]:
        return self.guard.exchanges

    async def start(self) -> None:
        """Load symbol rules, reconcile what a previous run left unfinished and take a first
        snapshot of every account. The same path after a crash and a clean stop."""
        guard = self.guard
        await self._load_rules_patiently()
        # Settle the past before deciding anything new, so no new action is mistaken for
        # an unfinished one.
        await guard.reconcile_unfinished(guard.owned)
        for account_id in guard.exchanges:
            snapshot = await self.poller.poll_now(account_id)
            if snapshot is None and account_id not in self._key_refused:
                log.warning("no first snapshot of %s; the poller keeps trying", account_id)
        guard.acting = True
        for account_id in guard.exchanges:
            await guard.evaluate(account_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Guard until ``stop`` is set (or a part fails)."""
        guard = self.guard
        await self.start()
        try:
            await self._run(stop)
        finally:
            # A poll or push handled while the parts stopped may have seen a close: its
            # record is written before the audit log closes.
            await guard.recorded()

    async def _run(self, stop: asyncio.Event) -> None:
        guard = self.guard
        async with self.poller, asyncio.TaskGroup() as group:
            tasks = [group.create_task(guard.executor.run(), name="executor")]
            for index, exchange in enumerate(guard.exchanges.values()):
                streams = Streams(
                    exchange, guard.on_event, self.poller.poll_now,
                    public=self._public_stream and index == 0, clock=self.clock,
                    on_key=self.on_key,
                )
                tasks.append(group.create_task(streams.run(), name=f"streams-{index}"))
            tasks.append(group.create_task(self._housekeeping(), name="housekeeping"))
            await stop.wait()
            log.info("stopping the guard")
            guard.acting = False
            await guard.executor.drain()
            await guard.recorded()
            for task in tasks:
                task.cancel()

    async def _load_rules_patiently(self) -> None:
        """The first symbol rules, retrying transient failures (lost answers, 5xx, 429,
        maintenance) for up to ``STARTUP_PATIENCE_S``: a flaky exchange must not stop a
        daemon that is about to guard positions. An exchange that cannot be connected to at
        all (a wrong URL, no network), bad keys and other errors stop start-up at once, with
        the reason (the service manager restarts it)."""
        deadline = self.clock.monotonic() + STARTUP_PATIENCE_S
        delays = backoff(0.5, 8.0)
        while True:
            try:
                await self.refresh_rules()
                return
            except RetryLater as exc:
                delay = next(delays)
                if isinstance(exc, Unreachable) or self.clock.monotonic() + delay > deadline:
                    raise
                log.warning("start-up: symbol rules not loaded (%s); retrying in %.1f s",
                            exc, delay)
                await self.clock.sleep(delay)

    async def refresh_rules(self) -> None:
        """Load every symbol's margin parameters (``GET /v1/public/info``)."""
        first = next(iter(self.guard.exchanges.values()))
        self.guard.rules = await first.get_symbol_rules()

    async def follow(self, current: Callable[[], frozenset[str]]) -> None:
        """Follow ``AccountOwnership`` to the set ``current()`` returns, read under the
        ownership lock so a target that changed while we waited is never applied stale.
        Stop acting on accounts given away at once, and stop the executor's work on them
        (queued actions are recorded as not sent, calls on the wire and reads finish) before
        returning; hand a newly taken account's unfinished actions (its last guard may have
        died mid-call) to the executor to settle before acting on it."""
        guard = self.guard
        async with self._ownership_lock:
            owned = current()
            gained = owned - guard.owned
            await guard.release(guard.owned - owned)
            if gained:
                await guard.reconcile_unfinished(gained)
                guard.owned = guard.owned | gained
                for account_id in gained:
                    await guard.evaluate(account_id)
        log.info("guarding %d of %d accounts", len(guard.owned), len(guard.exchanges))

    async def release(self, accounts: frozenset[str]) -> None:
        """Stop acting on ``accounts`` and finish the executor's work on them."""
        async with self._ownership_lock:
            await self.guard.release(accounts)

    def on_key(self, account_id: str, source: str, error: AuthError | None) -> None:
        """What a feed (``source``) learnt of the account's key: refused (``error``), or
        served again (``None``). The operator hears when the account's key goes from
        accepted to refused and back, not on every retry."""
        name = self.guard.name(account_id)
        refused = self._key_refused.setdefault(account_id, {})
        was_refused = bool(refused)
        if error is not None:
            refused[source] = error.message
            if not was_refused:
                log.error("account %s: the exchange refused its key (%s); not guarded until it "
                          "accepts it, retrying with back-off; the other accounts are guarded",
                          name, error)
                self.guard.notify(Alert(
                    AlertKind.KEY_REFUSED, name, None,
                    f"the exchange refused the key ({error.message}): not guarded until the "
                    "key is registered again", {"code": error.code}))
            return
        refused.pop(source, None)
        if not refused:
            del self._key_refused[account_id]
            if was_refused:
                log.info("account %s: the exchange accepts its key again; guarding it", name)

    def readiness(self) -> Readiness:
        """What ``/readyz`` reports: per owned account, how old its data is."""
        guard = self.guard
        now = self.clock.now_ms()
        accounts = []
        for account_id in sorted(guard.owned):
            ages = [guard.book.age_ms(p.key, now) or 0
                    for p in guard.book.isolated_positions(account_id)]
            last = guard.last_snapshot_ms.get(account_id)
            since_poll = None if last is None else (now - last) / 1000
            accounts.append(AccountReadiness(
                account=guard.name(account_id),
                data_age_s=max(ages) / 1000 if ages else since_poll,
                max_data_age_s=self.settings.poll.max_data_age_s,
                ws_connected=guard.ws_connected.get(account_id, False),
                polling_covering=since_poll is not None
                and since_poll <= self.settings.poll.max_data_age_s,
                key_refused="; ".join(sorted(set(self._key_refused.get(account_id, {}).values())))
                or None,
            ))
        return Readiness(database_reachable=guard.audit.database_ok, accounts=tuple(accounts),
                         spool_depth=guard.audit.spool_depth,
                         database_error=guard.audit.last_database_error)

    async def _housekeeping(self) -> None:
        guard = self.guard
        ticks = 0
        while True:
            await self.clock.sleep(1.0)
            ticks += 1
            try:
                await guard.executor.expire()
            except AuditError as exc:
                log.error("could not record expired verifications: %s", exc)
            guard.check_stale()
            if ticks % RULES_REFRESH_S == 0:
                # New listings and changed margin parameters, without a restart.
                try:
                    await self.refresh_rules()
                except ExchangeError as exc:
                    log.warning("could not refresh symbol rules: %s", exc)
            await self.publish_gauges()

    async def publish_gauges(self) -> None:
        """The data age and the budget left today of every owned account (metrics)."""
        guard = self.guard
        now = self.clock.now_ms()
        day = utc_day_start_ms(now)
        for account_id in guard.owned:
            ages = [guard.book.age_ms(p.key, now) or 0
                    for p in guard.book.isolated_positions(account_id)]
            label = metrics.account_label(account_id)
            metrics.DATA_AGE.labels(account=label).set(max(ages, default=0) / 1000)
            try:
                # a dry run's budget counts what it would have added (ledger.py)
                added = await guard.ledger.added_since(account_id, day, now,
                                                       dry_run=self.settings.guard.dry_run)
            except AuditError:
                continue  # the database is away and the account not loaded yet
            left = max(self.settings.budgets.per_account_per_day - added, Decimal(0))
            metrics.BUDGET_LEFT.labels(account=label).set(float(left))


def live_state(daemon: Daemon, instance_id: str,
               live_instances: Callable[[], int] | None = None) -> LiveState:
    """The live state of the daemon (``guardbot.view.state``): what the page, ``guardbot
    top`` and chat commands show."""
    from guardbot.view.state import LiveState

    health = daemon.settings.health
    return LiveState(daemon.guard, daemon.settings, daemon.readiness, instance_id=instance_id,
                     live_instances=live_instances, hours=health.chart_hours,
                     sample_s=health.chart_sample_s)


def live_view(state: LiveState, health: HealthSettings) -> View | None:
    """The live page over ``state``, or ``None`` when ``[health] view`` is off. Its token is
    masked in every log line from here on."""
    from guardbot.view.server import View

    if not health.view:
        return None
    token = health.view_token()  # check_settings read it already: it is readable
    if token is not None:
        register_secret(token.get_secret_value())
    return View(state, token=token, push_s=health.push_s)


def _exchange_failure(error: BaseException, url: str) -> str:
    """What went wrong with the exchange, in the operator's terms."""
    if isinstance(error, MalformedResponse):
        return (f"the exchange at {url} sent an answer guardbot cannot read ({error}): check "
                "that exchange.rest_url points at Orderly's REST API")
    if isinstance(error, Rejected):
        return f"the exchange at {url} refused a request guardbot needs: {error}"
    if isinstance(error, RetryLater):
        return f"cannot reach the exchange at {url}: {error}"
    return f"the exchange at {url} failed ({type(error).__name__}): {error}"


async def run_daemon(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    exchange_factory: Callable[..., Exchange] | None = None,
    ownership_interval_s: float = OWNERSHIP_INTERVAL_S,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Open everything, guard until SIGINT/SIGTERM (or ``stop``), close everything. Every
    part reads the time from ``clock``.

    With PostgreSQL, accounts are shared with other live instances (``AccountOwnership``,
    ticking every ``ownership_interval_s``); an account nobody holds is taken after five
    ticks, so a lone instance starts guarding a few seconds after start-up. Every call to
    the exchange first asks ``AccountOwnership.may_act`` (the ownership lease), so an
    instance woken after its peers took its accounts over sends nothing on them.

    Raises ``StartupError`` with what the operator must do when it cannot start.
    """
    from guardbot.exchange.client import OrderlyExchange

    try:
        policies = check_settings(settings)  # accounts, secrets, policies, port: as check-config
        for account in settings.accounts:
            register_secret(account.secret().get_secret_value())  # masked in every log line
    except ConfigError as exc:
        raise StartupError(str(exc), exits.USAGE) from None
    name_accounts({a.account_id: a.name for a in settings.accounts})
    for line in startup_banner(settings, policies):
        log.info("%s", line)
    try:
        audit = await AuditLog.open(settings.audit.url, settings.audit.spool_dir, clock=clock)
    except SchemaOutOfDate as exc:
        raise StartupError(str(exc), exits.DATABASE) from None  # it names `guardbot db upgrade`
    except Exception as exc:  # AuditUnavailable, SpoolInUse, bad URL: all stop start-up
        raise StartupError(f"cannot open the audit log: {exc}", exits.DATABASE) from None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    factory = exchange_factory or OrderlyExchange.from_settings
    exchanges: dict[str, Exchange] = {}
    instance_id = f"{socket.gethostname()}-{os.getpid()}"
    try:
        for account in settings.accounts:
            exchanges[account.account_id] = factory(account, settings.exchange)
        async with contextlib.AsyncExitStack() as stack:
            daemons: list[Daemon] = []

            async def release_given_away(owned: frozenset[str]) -> None:
                # AccountOwnership awaits this before it unlocks what it gave away, so our
                # queued actions, calls on the wire and reads on those accounts are over
                # before a peer can take them.
                for daemon in daemons:
                    # Every account not ours, not only those we think we own: a take-over's
                    # reconcile may have handed one's actions to the executor already.
                    await daemon.release(frozenset(daemon.exchanges) - owned)

            try:
                ownership = await stack.enter_async_context(
                    AccountOwnership(settings.audit.url, instance_id, exchanges,
                                     interval_s=ownership_interval_s,
                                     on_change=release_given_away, clock=clock))
            except OwnershipError as exc:
                raise StartupError(f"cannot share the accounts with other instances: {exc}",
                                   exits.DATABASE) from None
            alerter = await stack.enter_async_context(
                Alerter(settings.alerts.webhooks, clock=clock))
            await audit.start_run(__version__, config_hash(settings), socket.gethostname())
            daemon = Daemon(settings, exchanges, audit, policies,
                            account_names={a.account_id: a.name for a in settings.accounts},
                            owned=ownership.owned(), may_act=ownership.may_act,
                            notify=alerter.notify, clock=clock)
            daemons.append(daemon)
            daemon.live = live_state(daemon, instance_id, lambda: ownership.live_instances)
            if settings.health.enabled:
                try:
                    await stack.enter_async_context(HealthServer(
                        settings.health.host, settings.health.port, daemon.readiness,
                        view=live_view(daemon.live, settings.health)))
                except OSError as exc:  # taken since check_settings looked
                    raise StartupError(port_problem(settings.health) or f"health server: {exc}",
                                       exits.USAGE) from None
            # /status, /budget, /pause and /resume from the operators' Telegram chats
            # ([telegram] commands); the first two show the daemon's live state.
            await stack.enter_async_context(TelegramCommands(
                settings, audit.record_command, daemon.live.snapshot, clock=clock))

            async def follow_ownership() -> None:
                while True:
                    target = ownership.owned()
                    if target == daemon.guard.owned:
                        await ownership.wait_changed()
                        continue
                    try:
                        await daemon.follow(ownership.owned)
                    except Exception as exc:
                        # The taken accounts stay unguarded until their take-over works: never
                        # let this task die silently while it holds their locks.
                        log.error("cannot take over accounts yet: %s; retrying", exc,
                                  exc_info=not isinstance(exc, AuditError | ExchangeError))
                        await clock.sleep(1.0)

            follower = asyncio.create_task(follow_ownership(), name="ownership")
            try:
                await daemon.run(stop)
            except* AuthError as group:
                raise StartupError(
                    f"the exchange refused our key: {group.exceptions[0]}; check the "
                    "account's orderly_key, secret and scopes", exits.AUTH) from None
            except* ExchangeError as group:
                error = group.exceptions[0]
                raise StartupError(
                    _exchange_failure(error, settings.exchange.urls()["rest_url"]),
                    exits.UNREACHABLE if isinstance(error, RetryLater) else exits.EXCHANGE,
                ) from None
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            await audit.end_run()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
        for exchange in exchanges.values():
            await exchange.aclose()
        await audit.aclose()
