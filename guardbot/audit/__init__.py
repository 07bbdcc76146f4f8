"""The audit log: what guardbot did to which position, when, why, and whether it worked.

Modules: ``tables`` (schema), ``records`` (what is recorded, as spool records), ``chain``
(hash chain), ``spool`` (local fsync'd journal and its group-commit writer), ``writer`` (spool
to database, in the background), ``store`` (``AuditLog``, the daemon's API over both),
``ledger`` (the budgets, fed by the store), ``queries`` (the read API behind
``guardbot audit``), ``verification`` (``guardbot audit verify``), ``schema`` (Alembic:
``guardbot db``), ``database`` (engines), ``errors``.

The daemon's API (``guardbot.audit.store``)::

    log = await AuditLog.open(url, spool_dir, clock=SYSTEM_CLOCK)
        # SchemaOutOfDate("... run `guardbot db upgrade`"), AuditUnavailable, SpoolInUse;
        # replays whatever a previous process left in the spool
    run_id = await log.start_run(version, config_hash, host);  await log.end_run()
    action_id: str = await log.record_action(ActionRecord(
        account_id=..., symbol=..., margin_mode=MarginMode.ISOLATED, policy=...,
        kind=ActionKind.ADD,
        amount=Decimal, reason=..., dry_run=False, mark_price=..., margin=..., qty=...,
        liquidation_price=Decimal | None, distance=Decimal | None, data_age_ms=int,
        source=Source.WS, run_id=None (= the current run), details={str: str}))
        # writes the action and its INTENT event; durable (fsync'd spool) when it returns
    await log.record_event(action_id, account_id, EventKind.SENT, code=None, message=None,
                           detail={str: str} | None, latency_ms=None)
        # SENT SUCCEEDED REJECTED UNCERTAIN RECONCILED VERIFIED SKIPPED FAILED DRY_RUN
    await log.record_observation(account_id, symbol | None, kind, detail)
    log.ledger -> Ledger   # budgets: added_since, last_action, net_added, arbiter_state
    await log.unfinished_actions(account_ids) -> list[UnfinishedAction]
        # no SUCCEEDED/REJECTED/RECONCILED/VERIFIED/SKIPPED/FAILED/DRY_RUN event yet;
        # waits for the spool to reach the database; reloads the budget ledger
    await log.flush(timeout_s);  await log.aclose()
    log.spool_depth -> int
    log.database_ok -> bool;  log.last_database_error -> str | None   # readiness

Every ``record_*`` is durable on return and never waits on the database; it raises
``NotRecorded`` if even the local spool cannot be written (then do not act).
The ledger answers from memory; only its first question about an account reads the database
(``AuditUnavailable`` if it is down: treat the budget as exhausted).
"""

import logging

# Alembic narrates its plugin set-up and every connection at INFO (on import, too); the
# audit log and the `guardbot db` commands report what matters themselves.
logging.getLogger("alembic").setLevel(logging.WARNING)
