"""``guardbot backtest``: the user's own config on price paths, in virtual time.

The daemon's decision path (``guardbot.guard``: book, policies, arbiter, executor,
settlement, and the audit log the budgets come from) driven a second way: instead of REST
polls and WebSocket pushes from Orderly on the system clock, the simulated exchange's engine
in process (``venue``) on a ``ManualClock`` (``guardbot.clock``). Nothing here decides
anything the daemon decides.

    paths      price paths: named shapes, a stochastic generator, CSV replays
    portfolio  the book of positions: TOML, CSV, ``guardbot status --json``, the demo's
    venue      the ``Exchange`` port over the engine, through the wire code of both sides
    runner     one scenario: engine, guarded accounts and unguarded twins, the guard
    oracle     the least one-off top-up that survives a path, and whether budgets allow it
    results    what a run found; the exchange's ledger against the audit log
    report     terminal table, JSON, CSV, the ``--param`` trade-off
    chart      one self-contained HTML page of SVG charts per scenario
    variants   ``--param``: the config with one key changed
    cli        ``guardbot backtest``
"""
