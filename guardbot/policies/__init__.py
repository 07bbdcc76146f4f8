"""Policies: pure, synchronous decisions about one isolated position's margin.

``base`` defines the interface (``Policy``, ``PositionView``, ``PolicyContext``); ``topup``
and ``sweep`` are the built-ins; ``loader`` builds the configured policies (built-ins,
``strategies/`` files, entry points) at start-up; ``runner`` evaluates them with failures
isolated. The arbiter (``guardbot.arbiter``) decides what is actually done.
"""

from guardbot.policies.base import (
    Policy,
    PolicyContext,
    PolicyParamError,
    PositionView,
    decimal_param,
)

__all__ = ["Policy", "PolicyContext", "PolicyParamError", "PositionView", "decimal_param"]
