"""The simulated Orderly Network exchange (``guardbot sim``).

A sans-I/O engine (``engine``: accounts, positions, orders, margin, liquidation; ``margin``:
the exchange-side math; ``prices``: seeded mark-price scenarios) behind a thin aiohttp layer
(``server``: REST and both WebSockets on one port; ``auth``, ``limits``, ``faults``). It never
imports the bot's own modules, so each side checks the other (docs/architecture.md, "Risk math").
"""
