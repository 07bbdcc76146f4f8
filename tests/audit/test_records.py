"""Record ids (guardbot.audit.records.new_id)."""

from __future__ import annotations

import os

import pytest

from guardbot.audit import records


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    """Ids come from a generator seeded once per process. A child forked from the process
    (a worker pool, a daemonising double fork) inherits that generator's state: unless it is
    seeded again, parent and child draw the same ids at the same millisecond, and the second
    record of the pair is refused by the primary key (an action refused is not performed)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.close(read)
        os.write(write, records.new_id(1).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    assert child and child != records.new_id(1)
