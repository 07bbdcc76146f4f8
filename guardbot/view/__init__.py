"""Seeing the running guard: one live state model and everything that shows it.

    state    ``LiveState``: what the daemon holds (positions, bands, budgets, recent actions
             and refusals, data age, instance, ownership, readiness) as one JSON-able dict;
             the page, ``guardbot top`` and the Telegram commands all read it
    chart    the one chart code: inline SVG of a position's mark, liquidation price and
             margin over time with its actions marked (the page, reports, the backtest)
    page     the self-contained HTML page (inline CSS and script, no CDN)
    server   its routes on the health server: the page, its JSON, the SSE stream, charts and
             audit records, behind a bearer token beyond loopback
    top      ``guardbot top``: the same JSON in a terminal
"""
