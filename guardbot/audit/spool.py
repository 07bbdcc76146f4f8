"""The local append-only, fsync'd journal every audit record goes through first.

A record is durable once ``Spool.append`` returns: the line is written and fsync'd. The
background writer copies records into the database and calls ``release`` for segments it
has fully committed; whatever is still on disk at start-up is replayed in order (the
database write is idempotent, by record id). Segments are JSON-lines files named
``segment-<n>.jsonl`` in increasing ``n``; a line cut short by a crash (the last one of a
segment, never acknowledged) is dropped on replay. Blocking I/O: call from a worker thread.

An exclusive ``flock`` on the folder keeps a second process from sharing a spool.

``SpoolWriter`` is the asynchronous side: records handed to it are appended together, in a
worker thread, by one background task (group commit), and each ``append`` returns once its
record is fsync'd, so the event loop never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from guardbot.audit.errors import NotRecorded

log = logging.getLogger(__name__)

SEGMENT_BYTES = 8 * 1024 * 1024


class SpoolInUse(Exception):
    """Another process holds this spool folder: give every daemon its own ``spool_dir``."""


class Spool:
    def __init__(self, folder: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.folder / "spool.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolInUse(
                f"spool folder {self.folder} is in use by another guardbot process; "
                "give each daemon its own audit.spool_dir"
            ) from None
        self._segment_bytes = segment_bytes
        existing = self.segments()
        self._active = (existing[-1] if existing else 0) + 1
        self._fd: int | None = None
        self._size = 0

    def _path(self, number: int) -> Path:
        return self.folder / f"segment-{number:08d}.jsonl"

    def segments(self) -> list[int]:
        """Segment numbers on disk, oldest first."""
        return sorted(
            int(path.stem.removeprefix("segment-")) for path in self.folder.glob("segment-*.jsonl")
        )

    @property
    def active(self) -> int:
        """The segment new records are appended to."""
        return self._active

    def append(self, records: list[dict[str, Any]]) -> int:
        """Write and fsync ``records`` (group commit); returns the segment they went to."""
        if self._fd is not None and self._size >= self._segment_bytes:
            os.close(self._fd)
            self._fd = None
            self._active += 1
        if self._fd is None:
            self._fd = os.open(
                self._path(self._active), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )
            self._size = os.fstat(self._fd).st_size
            # The new file's directory entry must be durable too.
            dir_fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        data = b"".join(
            json.dumps(record, separators=(",", ":")).encode() + b"\n" for record in records
        )
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self._size += len(data)
        return self._active

    def read(self, number: int) -> Iterator[dict[str, Any]]:
        """The records of one segment, in order; a torn final line is skipped."""
        lines = self._path(number).read_bytes().split(b"\n")
        for index, line in enumerate(lines):
            if not line:
                continue
            try:
                yield json.loads(line)
            except ValueError:
                if index == len(lines) - 1:
                    log.warning(
                        "spool %s: dropping a torn last line (crash while writing)",
                        self._path(number),
                    )
                else:
                    log.error(
                        "spool %s: unreadable line %d kept in %s.bad",
                        self._path(number),
                        index + 1,
                        self._path(number),
                    )
                    with open(f"{self._path(number)}.bad", "ab") as bad:
                        bad.write(line + b"\n")

    def release(self, number: int) -> None:
        """Every record of segment ``number`` (never the active one) is in the database."""
        assert number != self._active, "the active segment is released by close(drained=True)"
        self._path(number).unlink(missing_ok=True)

    def close(self, drained: bool) -> None:
        """Close the spool; ``drained`` (every record is in the database) empties it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if drained:
            for number in self.segments():
                self._path(number).unlink(missing_ok=True)
        os.close(self._lock_fd)


Spooled = Callable[[list[dict[str, Any]], int], None]
"""Told each batch of records once they are durable, and the segment they went to."""


class SpoolWriter:
    """Appends records to a ``Spool`` in batches, in a worker thread (group commit).

    ``on_spooled(records, segment)`` is called with each batch once it is fsync'd, before any
    of its ``append`` calls return. ``run`` is the one task that writes; after ``close`` it
    ends once every record handed in is written.
    """

    def __init__(self, spool: Spool, on_spooled: Spooled) -> None:
        self._spool = spool
        self._on_spooled = on_spooled
        self.incoming: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._closing = False

    async def append(self, record: dict[str, Any]) -> None:
        """Return once ``record`` is durable; ``NotRecorded`` if the spool cannot be written."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.incoming.append((record, future))
        self._wakeup.set()
        await future

    def wake(self) -> None:
        self._wakeup.set()

    def close(self) -> None:
        """Write what was handed in, then let ``run`` end."""
        self._closing = True
        self._wakeup.set()

    async def run(self) -> None:
        while not (self._closing and not self.incoming):
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.incoming:
                batch, self.incoming = self.incoming, []
                try:
                    segment = await asyncio.to_thread(
                        self._spool.append, [record for record, _ in batch]
                    )
                except OSError as exc:
                    log.error("audit: cannot write the spool: %s", exc)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(
                                NotRecorded(
                                    f"the audit spool cannot be written: {exc.strerror or exc}"
                                )
                            )
                    continue
                self._on_spooled([record for record, _ in batch], segment)
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
