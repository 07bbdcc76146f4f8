"""Shared fixtures. The PostgreSQL server at 127.0.0.1:5432 is a real part of the suite."""

from __future__ import annotations

import os

PG_URL = os.environ.get(
    "GUARDBOT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
