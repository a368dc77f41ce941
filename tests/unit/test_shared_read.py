"""node/shared_read.py: requests share the round that begins after they asked, never one
that began before."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from vim_cluster.errors import StoreUnavailable
from vim_cluster.node.shared_read import SharedRead


async def test_requests_join_the_next_round_and_a_failure_reaches_every_one_of_it() -> None:
    shared: SharedRead[int] = SharedRead()
    version = 0
    gate = trio.Event()

    async def read() -> int:
        seen = version  # what the read sees is what was written before it began
        await gate.wait()
        return seen

    got: list[int] = []

    async def ask() -> None:
        got.append(await shared.get(read))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)  # round 1 begins at once: it waits for the gate
        await trio.testing.wait_all_tasks_blocked()
        version = 1  # written after round 1 began: the next requests must see it
        for _ in range(3):
            nursery.start_soon(ask)  # all three join round 2, which waits for round 1
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert got == [0, 1, 1, 1]  # the three that asked after version 1 was written see it
    assert shared.rounds == 2

    async def broken() -> int:
        await trio.lowlevel.checkpoint()
        raise StoreUnavailable("redis down")

    failures: list[str] = []

    async def ask_broken() -> None:
        with pytest.raises(StoreUnavailable):
            await shared.get(broken)
        failures.append("raised")

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ask_broken)
    assert failures == ["raised"] * 3 and shared.rounds == 4  # the first alone, then the two that waited
