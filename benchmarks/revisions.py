"""Run a benchmark script on another git revision: the helpers behind ``--compare REV``.

The revision's files are extracted with ``git archive`` into a folder, and the script runs
in a fresh interpreter with that folder first on ``PYTHONPATH``, so it imports that
revision's ``guardbot`` instead of this tree's. The script prints its figures as one JSON
line last (``--json``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def checkout(revision: str, folder: Path) -> Path:
    """The files of ``revision`` in ``folder`` (``git archive``)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision], check=True, capture_output=True
    ).stdout
    folder.mkdir()
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def child(script: str, tree: Path, argv: list[str]) -> dict[str, Any]:
    """The figures of one run of ``script`` in a fresh interpreter importing the
    ``guardbot`` of ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, script, *argv, "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.splitlines()[-1]))


def alternate(script: str, trees: dict[str, Path], argv: list[str], repeat: int,
              show: Callable[[str, dict[str, Any]], None]) -> dict[str, list[dict[str, Any]]]:
    """``repeat`` rounds of one run of ``script`` per tree (name -> tree), alternating so
    that every tree sees the same load on the machine; ``show(name, figures)`` after each
    run. Returns every run's figures by tree."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for _ in range(repeat):
        for name, tree in trees.items():
            figures = child(script, tree, argv)
            runs[name].append(figures)
            show(name, figures)
    return runs


def agreement(digests: Iterable[str]) -> str:
    """Whether every run decided the same (their decisions digests)."""
    found = set(digests)
    return "same decisions in every run" if len(found) == 1 else (
        f"DECISIONS DIFFER: {sorted(found)}")
