"""The live state model (``guardbot.view.state``: the JSON-able dict the web page and
``guardbot top`` read) as short chat answers: ``/status`` and ``/budget``.

Compact on purpose: a phone screen, one line per position, most endangered first::

    guardbot LIVE, ready: 2 positions, 1 account
    ! main ETH LONG 4.10% to liq (trigger 5.00%), margin 150.00
      main BTC SHORT 12.31% to liq (trigger 5.00%), margin 980.00

``!`` marks a position below its trigger, ``?`` one whose distance is unknown, ``~`` one
whose data is stale. Money is shown to the cent; the model carries every digit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

_CENT = Decimal("0.01")
_SYMBOL = re.compile(r"^PERP_(?P<base>[A-Z0-9]+)_USDC$")
_ZONE_MARK = {"trigger": "!", "unknown": "?"}


def usdc(raw: Any) -> str:
    """A money string of the model to the cent, with thousands separators; ``?`` if none."""
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        return "?"
    if not value.is_finite():
        return "?"
    return f"{value.quantize(_CENT, ROUND_HALF_EVEN):,}"


def percent(raw: Any) -> str:
    """A distance of the model (0.041) as a percentage (4.10%); ``?`` if none."""
    if raw is None:
        return "?"
    try:
        return f"{Decimal(str(raw)) * 100:.2f}%"
    except (InvalidOperation, ValueError):
        return "?"


def short_symbol(symbol: str) -> str:
    """``PERP_ETH_USDC`` as ``ETH``; any other symbol as it is."""
    match = _SYMBOL.match(symbol)
    return match["base"] if match else symbol


def _mode(state: Mapping[str, Any]) -> str:
    instance = state.get("instance") or {}
    words = ["DRY-RUN" if instance.get("dry_run") else "LIVE"]
    if instance.get("kill_switch"):
        words.append("PAUSED (kill switch: /resume)")
    return " ".join(words)


def _distance(raw: Any) -> Decimal:
    try:
        return Decimal(str(raw)) if raw is not None else Decimal("Infinity")
    except (InvalidOperation, ValueError):
        return Decimal("Infinity")


def _positions(state: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    positions: Sequence[Mapping[str, Any]] = state.get("positions") or []
    return sorted(positions, key=lambda p: (_distance(p.get("distance")), p.get("account", ""),
                                            p.get("symbol", "")))  # fmt: skip


def status_answer(state: Mapping[str, Any]) -> str:
    """``/status``: the mode and readiness, then one line per guarded position."""
    positions = _positions(state)
    accounts = state.get("accounts") or []
    here = sum(1 for a in accounts if a.get("guarded_here"))
    ready = "ready" if state.get("ready") else "NOT READY"
    lines = [f"guardbot {_mode(state)}, {ready}: {len(positions)} position"
             f"{'' if len(positions) == 1 else 's'}, {here} account{'' if here == 1 else 's'}"
             " guarded here"]
    lines += [f"- {problem}" for problem in state.get("problems") or []]
    for p in positions:
        mark = _ZONE_MARK.get(str(p.get("zone")), "~" if p.get("stale") else " ")
        trigger = (p.get("bands") or {}).get("trigger")
        against = f" (trigger {percent(trigger)})" if trigger is not None else ""
        lines.append(f"{mark} {p.get('account')} {short_symbol(str(p.get('symbol')))} "
                     f"{p.get('side')} {percent(p.get('distance'))} to liq{against}, "
                     f"margin {usdc(p.get('margin'))}")
    if not positions:
        lines.append("no isolated position is guarded here")
    return "\n".join(lines)


def budget_answer(state: Mapping[str, Any]) -> str:
    """``/budget``: what each account, and each of its positions, may still be given
    today (UTC), in USDC."""
    budgets = state.get("budgets") or {}
    lines = [f"budget left today (UTC day), USDC; at most {usdc(budgets.get('per_action'))} "
             f"per action, reserve {usdc(budgets.get('reserve'))}"]
    by_account: dict[str, list[Mapping[str, Any]]] = {}
    for p in _positions(state):
        by_account.setdefault(str(p.get("account")), []).append(p)
    shown = 0
    for account in state.get("accounts") or []:
        if not account.get("guarded_here"):
            continue
        shown += 1
        spent = account.get("budget") or {}
        lines.append(f"{account.get('name')}: {usdc(spent.get('left'))} of "
                     f"{usdc(spent.get('per_day'))} left ({usdc(spent.get('added'))} added)")
        for p in sorted(by_account.get(str(account.get("name")), []),
                        key=lambda p: str(p.get("symbol"))):  # fmt: skip
            mine = p.get("budget") or {}
            lines.append(f"  {short_symbol(str(p.get('symbol')))}: {usdc(mine.get('left'))} "
                         f"of {usdc(mine.get('per_day'))} left ({usdc(mine.get('added'))} "
                         "added)")
    if not shown:
        lines.append("no account is guarded here")
    return "\n".join(lines)
