"""The spool file format: durable appends, segments, torn lines, one owner."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardbot.audit.spool import Spool, SpoolInUse


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=64)
    used = [spool.append([{"n": n}, {"n": n + 100}]) for n in range(5)]
    assert used == sorted(used) and used[-1] > used[0], "small segments rotate"
    spool.close(drained=False)

    reopened = Spool(tmp_path)
    assert reopened.active > used[-1], "a new process appends to a new segment"
    records = [r for number in reopened.segments() for r in reopened.read(number)]
    assert [r["n"] for r in records] == [x for n in range(5) for x in (n, n + 100)]
    for number in reopened.segments():
        reopened.release(number)
    assert reopened.segments() == []
    reopened.close(drained=True)


def test_a_torn_last_line_is_dropped_and_a_corrupt_one_kept_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    number = spool.append([{"n": 1}, {"n": 2}])
    spool.close(drained=False)
    path = tmp_path / f"segment-{number:08d}.jsonl"
    lines = path.read_bytes().splitlines()
    path.write_bytes(lines[0] + b"\n" + b"{garbage\n" + lines[1] + b"\n" + b'{"n": 3, "x')

    reopened = Spool(tmp_path)
    assert [r["n"] for r in reopened.read(number)] == [1, 2]
    assert (tmp_path / f"segment-{number:08d}.jsonl.bad").read_bytes() == b"{garbage\n"
    reopened.close(drained=False)


def test_one_process_per_spool_folder(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(SpoolInUse):
        Spool(tmp_path)
    spool.close(drained=True)
    Spool(tmp_path).close(drained=True)
