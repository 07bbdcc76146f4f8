"""guardbot: keeps isolated-margin perpetual positions on Orderly Network out of liquidation."""

__version__ = "0.1.0"
