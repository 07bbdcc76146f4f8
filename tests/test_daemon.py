"""The daemon's lifecycle and its guard rails, against the simulated exchange over loopback
and a real SQLite audit log. The full scenarios are in tests/e2e."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from e2e.helpers import AuditReader, eventually, pin_mark
from loopback import serving
from sqlalchemy import create_engine, text
from telegram import fake_api as telegram_fake

from guardbot import __version__, feeds, metrics
from guardbot.audit import schema
from guardbot.audit.errors import NotRecorded
from guardbot.audit.store import ActionRecord, AuditLog, EventKind
from guardbot.clock import SYSTEM_CLOCK
from guardbot.config import parse_config
from guardbot.daemon import (
    Daemon,
    StartupError,
    _exchange_failure,
    config_hash,
    run_daemon,
    startup_banner,
)
from guardbot.domain import ActionKind, MarginMode, Source
from guardbot.exchange.client import OrderlyExchange
from guardbot.exchange.errors import MalformedResponse, Rejected, RetryLater
from guardbot.exchange.port import PositionsPushed
from guardbot.policies.loader import load_policies
from guardbot.sim.admin import SimAccount, open_account
from guardbot.sim.keys import generate_key
from guardbot.sim.server import SimServer

ETH = "PERP_ETH_USDC"


def settings_for(sim: SimServer, account: SimAccount, url: str, tmp: Path,
                 **sections: object) -> dict[str, object]:
    data: dict[str, object] = {
        "exchange": {"preset": "sim", "rest_url": sim.rest_url,
                     "public_ws_url": sim.public_ws_url, "private_ws_url": sim.private_ws_url},
        "audit": {"url": url, "spool_dir": str(tmp / "spool")},
        "poll": {"interval_s": 1.0, "fast_interval_s": 0.5, "max_data_age_s": 5.0},
        "budgets": {"cooldown_s": 0},
        "health": {"enabled": False},
        "accounts": [{"name": "main", "account_id": account.account_id,
                      "orderly_key": account.orderly_key,
                      "orderly_secret": account.orderly_secret}],
    }  # fmt: skip
    data.update(sections)
    return data


def test_the_config_hash_changes_with_the_config_and_never_shows_the_secret() -> None:
    account = {"name": "a", "account_id": "0x" + "ab" * 32,
               "orderly_key": "ed25519:9C6hybhQ6Aycep9jaUnP6uL9ZYvDjUp1aSkFWPUFJtpj",
               "orderly_secret": "4wBqpZM9xaSheZzJSMawUKKwhdpChKbZ5eu5ky4Vigw"}
    one = parse_config({"accounts": [account]})
    other = parse_config({"accounts": [{**account, "orderly_secret": "x" * 43}]})
    dry = parse_config({"accounts": [account], "guard": {"dry_run": True}})
    assert config_hash(one) != config_hash(dry)
    # the secret is redacted before hashing: it cannot be recovered or guessed from the hash
    assert config_hash(one) == config_hash(other)
    assert "4wBq" not in one.model_dump_json()


async def test_an_out_of_date_schema_stops_start_up_naming_the_upgrade(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    create_engine(url).connect().close()  # an empty database: no schema at all
    settings = parse_config(settings_for(sim, sim_account, url, tmp_path))
    with pytest.raises(StartupError, match="guardbot db upgrade"):
        await run_daemon(settings)


async def test_no_accounts_is_a_clear_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="no \\[\\[accounts\\]\\]"):
        await run_daemon(parse_config({}))


async def test_stale_data_is_never_acted_on_and_cross_never_evaluated(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    schema.upgrade(url)
    settings = parse_config(settings_for(sim, sim_account, url, tmp_path))
    audit = await AuditLog.open(url, tmp_path / "spool")
    await audit.start_run("test", "h", "host")
    async with OrderlyExchange.from_settings(settings.accounts[0], settings.exchange) as ex:
        daemon = Daemon(settings, {ex.account_id: ex}, audit,
                        load_policies(settings.policies, Path("strategies")))
        await daemon.start()
        guard = daemon.guard
        assert [p.margin_mode.value for p in guard.book.isolated_positions(ex.account_id)] == [
            "ISOLATED"], "the cross position on the same symbol is not the guard's"
        async with httpx.AsyncClient(base_url=sim.rest_url) as admin:
            (await admin.post("/sim/marks", json={"symbol": ETH, "price": "2850"})
             ).raise_for_status()
        fresh = await ex.get_positions()
        # the same snapshot, received 6 s ago (bound: 5 s)
        stale = replace(fresh, received_ms=fresh.received_ms - 6_000, positions=tuple(
            replace(p, received_ms=p.received_ms - 6_000) for p in fresh.positions))
        await guard.on_snapshot(stale)
        assert guard.book.isolated_positions(ex.account_id)[0].mark_price == Decimal(2850)
        assert guard.executor.blocked() == frozenset(), "no action on stale data"
        await guard.on_snapshot(fresh)
        assert guard.executor.blocked() == {(ex.account_id, ETH, guard.book.isolated_positions(
            ex.account_id)[0].margin_mode)}, "the same data, fresh, is acted on"
    await audit.aclose()


async def test_sigterm_stops_guardbot_run_cleanly(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    schema.upgrade(url)
    lines = [f'[exchange]\npreset = "sim"\nrest_url = "{sim.rest_url}"',
             f'public_ws_url = "{sim.public_ws_url}"',
             f'private_ws_url = "{sim.private_ws_url}"',
             f'[audit]\nurl = "{url}"\nspool_dir = "{tmp_path / "spool"}"',
             "[health]\nenabled = false",
             f'[[accounts]]\nname = "main"\naccount_id = "{sim_account.account_id}"',
             f'orderly_key = "{sim_account.orderly_key}"',
             'orderly_secret_env = "TEST_GUARD_SECRET"']
    config = tmp_path / "guardbot.toml"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    env = {**os.environ, "TEST_GUARD_SECRET": sim_account.orderly_secret}
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("guardbot")), "run", "--config", str(config),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    engine = create_engine(url)
    try:
        deadline = time.monotonic() + 20
        while True:  # until the guard has recorded its run and taken its first snapshot
            with engine.connect() as connection:
                runs = connection.execute(text("SELECT count(*) FROM runs")).scalar()
            if runs:
                break
            assert process.returncode is None and time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0, output.decode()
        assert sim_account.orderly_secret not in output.decode()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM run_ends")).scalar() == 1
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        engine.dispose()


async def test_an_unreachable_exchange_is_a_clear_start_up_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    schema.upgrade(url)
    closed = "http://127.0.0.1:9"  # discard port: nothing listens
    settings = parse_config({
        "exchange": {"preset": "sim", "rest_url": closed, "timeout_s": 2,
                     "public_ws_url": "ws://127.0.0.1:9/ws/{account_id}",
                     "private_ws_url": "ws://127.0.0.1:9/ws/{account_id}"},
        "audit": {"url": url, "spool_dir": str(tmp_path / "spool")},
        "health": {"enabled": False},
        "accounts": [{"name": "main", "account_id": "0x" + "ab" * 32,
                      "orderly_key": "ed25519:9C6hybhQ6Aycep9jaUnP6uL9ZYvDjUp1aSkFWPUFJtpj",
                      "orderly_secret": "4wBqpZM9xaSheZzJSMawUKKwhdpChKbZ5eu5ky4Vigw"}],
    })  # fmt: skip
    with pytest.raises(StartupError, match=r"cannot reach the exchange at http://127\.0\.0\.1:9"):
        await asyncio.wait_for(run_daemon(settings), 30)


@contextlib.asynccontextmanager
async def started_daemon(
    sim: SimServer, account: SimAccount, tmp: Path, **sections: object
) -> AsyncIterator[tuple[Daemon, AuditLog, OrderlyExchange]]:
    """A started daemon (not running its loops) over the sim account and a fresh SQLite
    log."""
    url = f"sqlite:///{tmp / 'audit.db'}"
    schema.upgrade(url)
    settings = parse_config(settings_for(sim, account, url, tmp, **sections))
    audit = await AuditLog.open(url, tmp / "spool")
    await audit.start_run("test", "h", "host")
    try:
        async with OrderlyExchange.from_settings(settings.accounts[0], settings.exchange) as ex:
            daemon = Daemon(settings, {ex.account_id: ex}, audit,
                            load_policies(settings.policies, Path("strategies")),
                            account_names={ex.account_id: "main"})
            await daemon.start()
            yield daemon, audit, ex
    finally:
        await audit.aclose()


async def record_sent(audit: AuditLog, account_id: str, margin: Decimal, amount: str) -> str:
    """An ADD a previous run sent and never saw the answer to."""
    action_id = await audit.record_action(ActionRecord(
        account_id=account_id, symbol=ETH, margin_mode=MarginMode.ISOLATED, policy="topup",
        kind=ActionKind.ADD, amount=Decimal(amount), reason="test", dry_run=False,
        mark_price=Decimal(3000), margin=margin, qty=Decimal(1), data_age_ms=0,
        source=Source.REST))
    await audit.record_event(action_id, account_id, EventKind.SENT)
    await audit.flush(5)
    return action_id


def event_kinds(audit: AuditLog, action_id: str) -> list[tuple[str, str | None]]:
    with audit.engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT kind, message FROM action_events WHERE action_id = :id ORDER BY seq"),
            {"id": action_id})
        return [(row.kind, row.message) for row in rows]


async def test_an_unfinished_action_no_read_shows_stays_unsettled_for_the_window(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    async with started_daemon(sim, sim_account, tmp_path) as (daemon, audit, ex):
        guard = daemon.guard
        key = (ex.account_id, ETH, MarginMode.ISOLATED)
        margin = guard.book.isolated_positions(ex.account_id)[0].margin
        lost = await record_sent(audit, ex.account_id, margin, "30")
        reads = sim.counters.get("requests", 0)
        await guard.reconcile_unfinished([ex.account_id])
        deadline = time.monotonic() + 5
        while sim.counters.get("requests", 0) == reads:  # the read for evidence
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert guard.executor.settlement.unsettled(key) == 1, (
            "a read showing nothing cannot say the dead run's call will not still land")
        assert key not in guard.executor.blocked(), "a rescue may still go out meanwhile"
        assert [k for k, _ in event_kinds(audit, lost)] == ["INTENT", "SENT"]
    # exchange.timeout_s is 10 s: "not applied" only from a read 11 s later, never at once
    assert [k for k, _ in event_kinds(audit, lost)] == ["INTENT", "SENT"]


async def test_a_late_read_settles_a_handed_over_action_as_applied(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    exchange = {"preset": "sim", "rest_url": sim.rest_url, "timeout_s": 0.5,
                "public_ws_url": sim.public_ws_url, "private_ws_url": sim.private_ws_url}
    async with started_daemon(sim, sim_account, tmp_path, exchange=exchange) as (daemon, audit, ex):
        guard = daemon.guard
        key = (ex.account_id, ETH, MarginMode.ISOLATED)
        margin = guard.book.isolated_positions(ex.account_id)[0].margin
        lost = await record_sent(audit, ex.account_id, margin, "30")
        await guard.reconcile_unfinished([ex.account_id])
        sim.engine.adjust_margin(ex.account_id, ETH, "ADD", "30")  # lands 0.1 s later
        sim.flush()
        deadline = time.monotonic() + 10
        while guard.executor.settlement.unsettled(key):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await audit.flush(5)
        assert event_kinds(audit, lost)[-1] == ("RECONCILED", "applied")


async def test_giving_an_account_away_records_its_queued_actions_as_not_sent(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    async with started_daemon(sim, sim_account, tmp_path) as (daemon, audit, ex):
        guard = daemon.guard
        async with httpx.AsyncClient(base_url=sim.rest_url) as admin:
            (await admin.post("/sim/marks", json={"symbol": ETH, "price": "2850"})
             ).raise_for_status()
        await guard.on_snapshot(await ex.get_positions())
        assert guard.executor.blocked(), "an ADD is queued (the workers are not running)"
        await daemon.follow(lambda: frozenset())  # give every account away
        assert guard.executor.blocked() == frozenset()
        # If the account comes back, its history is read again from the audit log.
        assert ex.account_id not in guard.ledger._loaded_from
        await audit.flush(5)
        with audit.engine.connect() as connection:
            action_id = connection.execute(text("SELECT id FROM actions")).scalar_one()
        assert event_kinds(audit, action_id)[-1] == (
            "FAILED", "not sent: account handed to another instance")
        await guard.on_snapshot(await ex.get_positions())
        assert guard.executor.blocked() == frozenset(), "no action on an account given away"


async def test_one_position_that_cannot_be_evaluated_does_not_stop_the_others(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    async with started_daemon(sim, sim_account, tmp_path) as (daemon, audit, ex):
        guard = daemon.guard
        async with httpx.AsyncClient(base_url=sim.rest_url) as admin:
            (await admin.post("/sim/marks", json={"symbol": ETH, "price": "2850"})
             ).raise_for_status()
        snapshot = await ex.get_positions()
        eth = next(p for p in snapshot.positions if p.margin_mode is MarginMode.ISOLATED)
        other = next(symbol for symbol in guard.rules if symbol != ETH)
        broken = replace(eth, symbol=other, leverage=0)  # the margin maths refuses it
        failures = metrics.EVALUATION_FAILURES.labels(account="main")
        before = failures._value.get()
        await guard.on_snapshot(replace(snapshot, positions=(broken, *snapshot.positions)))
        assert guard.executor.blocked() == {(ex.account_id, ETH, MarginMode.ISOLATED)}
        assert failures._value.get() == before + 1
        await audit.flush(5)
        with audit.engine.connect() as connection:
            kinds = connection.execute(text(
                "SELECT kind FROM observations WHERE symbol = :s"), {"s": other}).scalars()
            assert list(kinds) == ["evaluation_failed"]


async def test_the_reserve_counts_adds_decided_since_the_balance_was_read(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    async with started_daemon(sim, sim_account, tmp_path) as (daemon, audit, ex):
        guard = daemon.guard
        balance = guard.free_balance[ex.account_id]
        margin = guard.book.isolated_positions(ex.account_id)[0].margin
        await record_sent(audit, ex.account_id, margin, "700")  # decided after the poll
        state = await guard.ledger.arbiter_state(
            ex.account_id, [], guard.clock.now_ms(), cooldown_s=0, free_balance=balance,
            balance_read_ms=guard.balance_ms[ex.account_id],
            settle_window_ms=guard.settle_window_ms)
        assert state.free_balance[ex.account_id] == balance - 700


async def test_with_the_audit_database_gone_a_new_position_is_still_topped_up(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    async with started_daemon(sim, sim_account, tmp_path) as (daemon, audit, ex):
        guard = daemon.guard
        assert daemon.readiness().database_reachable
        # The database file disappears (new connections find an empty one): its history,
        # and so the position's last action, cannot be read; the budgets are in memory.
        (tmp_path / "audit.db").rename(tmp_path / "audit.away")
        audit.engine.dispose()
        async with httpx.AsyncClient(base_url=sim.rest_url) as admin:
            (await admin.post("/sim/marks", json={"symbol": ETH, "price": "2850"})
             ).raise_for_status()
        await guard.on_snapshot(await ex.get_positions())
        assert guard.executor.blocked() == {(ex.account_id, ETH, MarginMode.ISOLATED)}, (
            "an ADD within the known budgets goes ahead")
        deadline = time.monotonic() + 10
        while audit.database_ok:  # the writer notices on its next write
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert not daemon.readiness().database_reachable
        (tmp_path / "audit.away").rename(tmp_path / "audit.db")
        audit.engine.dispose()


def test_exchange_start_up_errors_say_what_happened() -> None:
    url = "http://x"
    assert "cannot reach" in _exchange_failure(RetryLater("connection refused"), url)
    unreadable = _exchange_failure(MalformedResponse("not JSON"), url)
    assert "cannot read" in unreadable and "cannot reach" not in unreadable
    refused = _exchange_failure(Rejected(-1102, "bad symbol"), url)
    assert "refused" in refused and "-1102" in refused


async def test_the_budget_left_today_is_published(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    async with started_daemon(sim, sim_account, tmp_path) as (daemon, audit, ex):
        guard = daemon.guard
        margin = guard.book.isolated_positions(ex.account_id)[0].margin
        await record_sent(audit, ex.account_id, margin, "700")
        await daemon.publish_gauges()
        gauge = metrics.BUDGET_LEFT.labels(account="main")  # the config's name, not the id
        assert gauge._value.get() == float(guard.settings.budgets.per_account_per_day - 700)


async def test_a_dry_runs_budget_left_counts_what_it_would_have_added(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    async with started_daemon(sim, sim_account, tmp_path, guard={"dry_run": True}) as (
            daemon, audit, ex):
        guard = daemon.guard
        margin = guard.book.isolated_positions(ex.account_id)[0].margin
        await record_sent(audit, ex.account_id, margin, "700")  # a real one counts too
        action_id = await audit.record_action(ActionRecord(
            account_id=ex.account_id, symbol=ETH, margin_mode=MarginMode.ISOLATED,
            policy="topup", kind=ActionKind.ADD, amount=Decimal(300), reason="test",
            dry_run=True, mark_price=Decimal(3000), margin=margin, qty=Decimal(1),
            data_age_ms=0, source=Source.REST))
        await audit.record_event(action_id, ex.account_id, EventKind.DRY_RUN)
        await daemon.publish_gauges()
        gauge = metrics.BUDGET_LEFT.labels(account="main")
        assert gauge._value.get() == float(guard.settings.budgets.per_account_per_day - 1000)


async def test_start_up_waits_out_a_flaky_exchange(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    """Every answer a 5xx at first: start-up retries (it does not give up on the first
    transient failure, as a daemon about to guard positions must not) and completes once the
    exchange recovers."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    schema.upgrade(url)
    settings = parse_config(settings_for(sim, sim_account, url, tmp_path))
    audit = await AuditLog.open(url, tmp_path / "spool")
    await audit.start_run("test", "h", "host")
    async with httpx.AsyncClient(base_url=sim.rest_url) as admin:
        (await admin.post("/sim/faults", json={"error_rate": 1.0})).raise_for_status()
        try:
            async with OrderlyExchange.from_settings(settings.accounts[0],
                                                     settings.exchange) as ex:
                daemon = Daemon(settings, {ex.account_id: ex}, audit,
                                load_policies(settings.policies, Path("strategies")))
                guard = daemon.guard
                starting = asyncio.create_task(daemon.start())
                deadline = time.monotonic() + 10
                while sim.counters.get("fault_5xx", 0) < 4:
                    assert time.monotonic() < deadline, sim.counters
                    assert not starting.done(), starting
                    await asyncio.sleep(0.05)
                (await admin.post("/sim/faults", json={"error_rate": 0})).raise_for_status()
                await asyncio.wait_for(starting, 20)
                assert guard.rules, "symbol rules loaded after the exchange recovered"
                assert guard.book.isolated_positions(ex.account_id)
        finally:
            await audit.aclose()


async def test_a_take_over_applies_the_ownership_target_current_when_it_runs(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    """A take-over waiting behind a release must not re-add an account that was given away
    while it waited: the target is read under the ownership lock, not before it."""
    async with started_daemon(sim, sim_account, tmp_path) as (daemon, _audit, ex):
        guard = daemon.guard
        await daemon.follow(lambda: frozenset())  # give every account away
        target = [frozenset({ex.account_id})]
        async with daemon._ownership_lock:  # a release in progress
            taking = asyncio.create_task(daemon.follow(lambda: target[0]))
            await asyncio.sleep(0)
            target[0] = frozenset()  # given away again before the take-over ran
        await taking
        assert guard.owned == frozenset()
        target[0] = frozenset({ex.account_id})
        await daemon.follow(lambda: target[0])
        assert guard.owned == frozenset({ex.account_id})


async def test_an_audit_failure_while_handling_a_push_does_not_stop_the_guard(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The spool cannot be written (disk full): the push is dropped with an error logged,
    instead of the exception ending the streams task and with it the whole guard."""
    async with started_daemon(sim, sim_account, tmp_path) as (daemon, _audit, ex):
        guard = daemon.guard
        position = guard.book.isolated_positions(ex.account_id)[0]
        newer = replace(position, margin=position.margin + 1, seq=(position.seq or 0) + 1,
                        exchange_ms=position.exchange_ms + 1)

        async def disk_full(_: object) -> None:
            raise NotRecorded("spool write failed: No space left on device")

        monkeypatch.setattr(guard.executor, "observe", disk_full)
        await guard.on_event(ex.account_id, PositionsPushed((newer,)))
        assert guard.book.get(newer.key) == newer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    """A local webhook that keeps every alert body it receives."""
    received: list[dict[str, object]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serving(app) as base:
        yield f"{base}/hook", received


async def test_a_refused_key_on_one_account_never_stops_the_guarding_of_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """One account's key is not registered at start-up: it is named in one line, alerted
    and shown on /readyz, the other account is guarded (topped up), and the refused key is
    retried, so once it is registered that account is guarded too; revoked at run time, it
    is refused again and nothing stops."""
    monkeypatch.setattr(feeds, "AUTH_RETRY_CAP_S", 1.0)  # retries every second, not minute
    caplog.set_level(logging.INFO, "guardbot.daemon")
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    schema.upgrade(url)
    book = [(ETH, "ISOLATED", "1", 10)]
    port = free_port()
    ready_url = f"http://127.0.0.1:{port}/readyz"
    async with (SimServer(seed=7, scenario="calm", speed=0) as sim,
                webhook_receiver() as (hook_url, alerts), httpx.AsyncClient() as http):
        good = await open_account(sim.rest_url, "20000", book)
        bad = await open_account(sim.rest_url, "20000", book)
        new_key, new_secret = generate_key()  # for `bad`, not registered yet
        data = settings_for(sim, good, url, tmp_path, health={"port": port},
                            alerts={"webhooks": [{"url": hook_url, "min_interval_s": 0}]})
        data["accounts"] = [*data["accounts"],  # type: ignore[misc]
                            {"name": "bad", "account_id": bad.account_id,
                             "orderly_key": new_key, "orderly_secret": new_secret}]
        settings = parse_config(data)

        def margin(account: SimAccount) -> Decimal:
            return next(p.margin for p in sim.engine.positions(sim.engine.account(
                account.account_id)) if p.symbol == ETH)

        async def key_problems() -> list[str]:
            body = (await http.get(ready_url)).json()
            return [p for p in body["problems"] if "account bad: the exchange refuses" in p]

        async def readiness_says(refused: bool) -> None:
            for _ in range(150):  # the streams retry the key each second
                if bool(await key_problems()) is refused:
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"/readyz never said the key is {'' if refused else 'not '}"
                                 "refused")

        before = margin(good), margin(bad)
        stop = asyncio.Event()
        task = asyncio.create_task(run_daemon(settings, stop=stop))
        try:
            await eventually(lambda: any(a.get("kind") == "key_refused" for a in alerts))
            refused = [r for r in caplog.records
                       if "the exchange refused its key" in r.getMessage()]
            assert len(refused) == 1 and refused[0].levelname == "ERROR"
            assert refused[0].getMessage().startswith(
                "account bad: the exchange refused its key (authentication failed: code -1002")
            assert [a["account"] for a in alerts if a["kind"] == "key_refused"] == ["bad"]
            [problem] = await key_problems()
            assert "orderly key is not registered to this account" in problem

            await pin_mark(sim, ETH, "2850")  # both below topup's trigger
            await eventually(lambda: margin(good) > before[0])
            assert margin(bad) == before[1], "nothing reads or acts on the refused account"
            assert not task.done()

            async with httpx.AsyncClient(base_url=sim.rest_url) as admin:
                (await admin.post("/sim/keys", json={
                    "account_id": bad.account_id, "orderly_key": new_key})).raise_for_status()
            await eventually(lambda: margin(bad) > before[1], timeout_s=15)
            await readiness_says(refused=False)
            assert any("account bad: the exchange accepts its key again" in r.getMessage()
                       for r in caplog.records)

            async with httpx.AsyncClient(base_url=sim.rest_url) as admin:
                (await admin.request("DELETE", "/sim/keys", json={"orderly_key": new_key})
                 ).raise_for_status()
            await readiness_says(refused=True)  # revoked at run time: not ready again
            await eventually(lambda: len([a for a in alerts if a["kind"] == "key_refused"]) == 2)
            assert {a["account"] for a in alerts if a["kind"] == "key_refused"} == {"bad"}
            assert not task.done(), "and the daemon goes on"
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


def test_the_start_up_banner_says_what_is_guarded_and_how_and_shows_no_secret(
    sim: SimServer, sim_account: SimAccount, tmp_path: Path,
) -> None:
    data = settings_for(sim, sim_account, "postgresql+psycopg://guard:hunter2@db/audit",
                        tmp_path, guard={"dry_run": True},
                        budgets={"per_action": "250", "cooldown_s": 15},
                        policies=[{"use": "topup", "params": {"trigger": "0.04"}},
                                  {"use": "sweep", "name": "sweep-eth", "symbols": [ETH],
                                   "params": {"safe": "0.25"}}])
    settings = parse_config(data)
    lines = startup_banner(settings, load_policies(settings.policies, Path("strategies")))
    text = "\n".join(lines)
    assert lines[0] == f"guardbot {__version__} starting, DRY-RUN: decisions are recorded, no " \
        "margin call is sent"
    assert f"exchange: sim (REST {sim.rest_url}, public WebSocket {sim.public_ws_url}" in text
    assert "accounts (1): main" in lines
    [topup] = [line for line in lines if line.startswith("policy topup (topup): ")]
    # its configured params, then its declared distances (the default target included)
    assert topup.startswith("policy topup (topup): trigger=0.04; trigger 0.04, add_target 0.")
    assert topup.endswith("; every position")
    assert "policy sweep-eth (sweep): safe=0.25; reduce_floor 0.25; symbols PERP_ETH_USDC" in lines
    assert "budgets (USDC): per action 250, per position per day 5000, per account per day " \
        "20000, minimum 1, reserve 0; cooldown 15 s" in lines
    assert "hunter2" not in text and sim_account.orderly_secret not in text
    assert sim_account.orderly_key not in text and sim_account.account_id not in text
    live = startup_banner(parse_config(settings_for(sim, sim_account, "sqlite:///a.db", tmp_path)),
                          load_policies([], Path("strategies")))
    assert live[0].endswith("LIVE: margin calls are sent")


async def test_pause_over_telegram_is_the_kill_switch_of_the_running_guard(
    tmp_path: Path,
) -> None:
    """/pause from the operators' chat stops new actions of the running daemon (the arbiter
    refuses them as the kill switch), /status and /budget show the live state, /resume lets
    the guard rescue again; every command audited."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    schema.upgrade(url)
    stop_file = tmp_path / "STOP"
    async with (SimServer(seed=7, scenario="calm", speed=0) as sim,
                telegram_fake.serve(SYSTEM_CLOCK) as bot_api):
        account = await open_account(sim.rest_url, "20000", [(ETH, "ISOLATED", "1", 10)])
        settings = parse_config(settings_for(
            sim, account, url, tmp_path, guard={"kill_switch_file": str(stop_file)},
            alerts={"webhooks": [{"url": bot_api.url, "format": "telegram",
                                  "chat_id": telegram_fake.OPERATORS, "min_interval_s": 0}]},
            telegram={"commands": True, "long_poll_s": 1}))
        reader = AuditReader(url)

        def margin() -> Decimal:
            return next(p.margin for p in sim.engine.positions(
                sim.engine.account(account.account_id)) if p.symbol == ETH)

        def answers() -> list[str]:
            return [m["text"] for m in bot_api.sent if "reply_parameters" in m]

        stop = asyncio.Event()
        task = asyncio.create_task(run_daemon(settings, stop=stop))
        try:
            await bot_api.send("/pause")
            await eventually(lambda: len(answers()) == 1)
            assert answers()[0].startswith("paused") and stop_file.exists()
            await bot_api.send("/status")
            await bot_api.send("/budget")
            await eventually(lambda: len(answers()) == 3)
            status, budget = answers()[1].splitlines(), answers()[2].splitlines()
            assert status[0].startswith("guardbot LIVE PAUSED (kill switch: /resume)")
            assert status[0].endswith("1 position, 1 account guarded here")
            assert status[-1].startswith("  main ETH LONG ")
            assert "to liq (trigger 5.00%), margin " in status[-1]
            assert budget[1:] == ["main: 20,000.00 of 20,000.00 left (0.00 added)",
                                  "  ETH: 5,000.00 of 5,000.00 left (0.00 added)"]
            before = margin()
            await pin_mark(sim, ETH, "2850")  # below topup's trigger
            await eventually(lambda: any(
                e.message and "kill switch" in e.message for e in reader.events("SKIPPED")))
            assert margin() == before, "paused: nothing added"
            await bot_api.send("/resume")
            await eventually(lambda: margin() > before)
            assert answers()[3].startswith("resumed") and not stop_file.exists()
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
        with reader.engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT command, result, run_id IS NOT NULL FROM operator_commands "
                "ORDER BY time")).all()
        reader.close()
    assert [tuple(row) for row in rows] == [("pause", "done", 1), ("status", "answered", 1),
                                            ("budget", "answered", 1), ("resume", "done", 1)]
