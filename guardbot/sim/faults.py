"""Fault injection, switchable at run time through ``POST /sim/faults``.

Each REST request to an Orderly path draws, in order: added latency (always, if set), then
an injected 5xx, then an injected 429, and after the handler has run, whether to lose the
response (the change is applied, the connection is closed without an answer). WebSocket
connections are dropped every ``ws_drop_every_s`` seconds. Draws come from a seeded
generator, so a run is reproducible for a given request order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any


class FaultsError(ValueError):
    """A fault setting that is not allowed (the message names it)."""


@dataclass(slots=True)
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    lost_response_rate: float = 0.0
    ws_drop_every_s: float = 0.0  # 0 = never

    def update(self, settings: dict[str, Any]) -> None:
        """Apply the given settings (all or nothing); unknown names and bad values raise."""
        names = {f.name for f in fields(self)}
        parsed: dict[str, float] = {}
        for name, value in settings.items():
            if name not in names:
                raise FaultsError(f"unknown fault {name!r}: use one of {', '.join(sorted(names))}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise FaultsError(f"{name} must be a number")
            if value < 0 or (name.endswith("_rate") and value > 1):
                raise FaultsError(f"{name} must be {'0..1' if name.endswith('_rate') else '>= 0'}")
            parsed[name] = float(value)
        for name, value in parsed.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class FaultDice:
    """Seeded draws deciding which faults hit a request."""

    def __init__(self, faults: Faults, seed: int) -> None:
        self.faults = faults
        self._rng = random.Random(seed)

    def _hit(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def server_error(self) -> bool:
        return self._hit(self.faults.error_rate)

    def rate_limited(self) -> bool:
        return self._hit(self.faults.rate_limit_rate)

    def lose_response(self) -> bool:
        return self._hit(self.faults.lost_response_rate)
