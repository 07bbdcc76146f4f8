"""The guard's recent decisions per position, for the record of its death
(docs/architecture.md, "Audit log"): when a guarded position is liquidated, the
``position_liquidated`` record carries what the guard last decided on it and why, refusals
the audit log otherwise keeps only once a minute (or not at all, for routine ones such as a
cooldown) included.

In memory only, a few notes per position: a restart starts with none (``guardbot audit why``
reads the actions of the position from the audit log as well). A note repeated on every
tick (the same refusal, the same stale data) is kept once, with how often and when last.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from guardbot.domain import PositionKey

NOTES = 8  # kept per position
Text = str | Callable[[], str]  # a callable is worded only when the notes are taken


@dataclass(slots=True)
class Note:
    first_ms: int
    last_ms: int
    kind: str  # "decided", "refused", "stale", "failed"
    tag: str  # notes with the same tag in a row are one note
    text: Text  # the latest wording
    times: int = 1

    def as_dict(self) -> dict[str, str]:
        text = self.text if isinstance(self.text, str) else self.text()
        note = {"at_ms": str(self.first_ms), "kind": self.kind, "what": text}
        if self.times > 1:
            note |= {"times": str(self.times), "last_ms": str(self.last_ms)}
        return note


class Trail:
    """The last ``NOTES`` notes of every position the guard looked at."""

    def __init__(self) -> None:
        self._notes: dict[PositionKey, deque[Note]] = {}

    def note(self, key: PositionKey, now_ms: int, kind: str, tag: str, text: Text) -> None:
        """Note ``text`` (worded lazily if a callable: the guard notes on every tick);
        right after a note of the same ``tag`` it only counts again and takes the new
        wording."""
        notes = self._notes.get(key)
        if notes is None:
            notes = self._notes[key] = deque(maxlen=NOTES)
        elif notes and notes[-1].tag == tag:
            last = notes[-1]
            last.times += 1
            last.last_ms, last.text = now_ms, text
            return
        notes.append(Note(now_ms, now_ms, kind, tag, text))

    def take(self, key: PositionKey) -> str:
        """The notes of a position that is gone, as JSON (oldest first), forgetting them."""
        notes = self._notes.pop(key, ())
        return json.dumps([note.as_dict() for note in notes], separators=(",", ":"))

    def notes(self, key: PositionKey) -> list[dict[str, str]]:
        """The notes of a position, oldest first, as ``take`` words them, keeping them (the
        live view, guardbot.view.state)."""
        return [note.as_dict() for note in self._notes.get(key, ())]

    def forget_account(self, account_id: str) -> None:
        for key in [k for k in self._notes if k[0] == account_id]:
            del self._notes[key]
