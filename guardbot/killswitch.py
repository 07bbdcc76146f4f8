"""The kill switch: while ``[guard] kill_switch_file`` exists, the guard takes no new action
(the arbiter refuses every intent with ``kill_switch``) and the executor sends none of the
actions still queued (recorded as not sent). An operator engages it with
``touch`` on the box or ``/pause`` over Telegram, and releases it with ``rm`` or ``/resume``:
the file is the switch, whoever flips it.

Engaging writes who did it and when into the file, so ``cat`` (and ``/resume``'s answer)
tells. Both are atomic: the file is created exclusively and removed in one call, so two
operators racing never both "win".
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# The most of a note read back from the file (someone may have put anything there).
MAX_NOTE = 500


def engaged(path: Path) -> bool:
    return path.exists()


def engage(path: Path, note: str) -> bool:
    """Create the file holding ``note``; ``False`` if it already exists (already engaged).
    Raises ``OSError`` if it cannot be created (a missing folder, no permission)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as file:
        file.write(note.rstrip("\n") + "\n")
    return True


def note(path: Path) -> str | None:
    """What the file says (who engaged it), ``None`` if it is absent or unreadable."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return path.read_text()[:MAX_NOTE].strip()
    return None


def release(path: Path) -> str | None:
    """Remove the file; returns its note ("" if empty or unreadable), ``None`` if it was not
    engaged. Raises ``OSError`` if it cannot be removed."""
    said = note(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return said or ""
