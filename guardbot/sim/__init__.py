"""The simulated Orderly Network exchange (``guardbot sim``).

A sans-I/O engine (``engine``: the exchange state and its requests, with ``fills``,
``liquidation``, ``settings``, ``reports`` and ``journal``; its values in ``records`` and
``params``; ``margin``: the exchange-side math; ``prices``: seeded mark-price scenarios) behind
a thin aiohttp layer (``server`` assembles ``rest``, ``streams`` and ``admin`` on one port, with
``auth``, ``limits``, ``faults``; ``payloads``: the JSON shapes). It never imports the bot's
own modules, so each side checks the other (docs/architecture.md, "Risk math").
"""
