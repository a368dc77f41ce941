"""CatchUp's bookkeeping (node/catch_up.py): from when a link-up re-delivers, and that a failed
or cancelled run is left for the next link-up."""

from __future__ import annotations

import pytest
import trio

from vim_cluster.errors import StoreUnavailable
from vim_cluster.node.catch_up import CatchUp


class Clock:
    def __init__(self) -> None:
        self.now = 100_000

    def __call__(self) -> int:
        return self.now


def recorder(calls: list[int], fail: BaseException | None = None):  # type: ignore[no-untyped-def]
    async def deliver_since(since: int) -> int:
        calls.append(since)
        if fail is not None:
            raise fail
        return 3
    return deliver_since


async def test_first_link_up_catches_up_from_the_node_start_minus_the_margin() -> None:
    clock, calls = Clock(), []
    catch_up = CatchUp(recorder(calls), clock, margin_ms=1_000)
    clock.now += 5_000
    assert await catch_up.run() == 3
    assert calls == [99_000]
    assert catch_up.down_since is None


async def test_a_link_up_without_a_loss_since_the_last_catch_up_sends_nothing() -> None:
    clock, calls = Clock(), []
    catch_up = CatchUp(recorder(calls), clock, margin_ms=1_000)
    await catch_up.run()
    assert await catch_up.run() == 0
    assert calls == [99_000]


async def test_the_first_loss_counts_until_the_next_catch_up() -> None:
    clock, calls = Clock(), []
    catch_up = CatchUp(recorder(calls), clock, margin_ms=1_000)
    await catch_up.run()
    clock.now = 200_000
    catch_up.lost()
    clock.now = 210_000
    catch_up.lost()  # a failed attempt to link again: still down since 200 s
    await catch_up.run()
    assert calls == [99_000, 199_000]


async def test_a_failed_run_is_left_for_the_next_link_up() -> None:
    clock, calls = Clock(), []
    catch_up = CatchUp(recorder(calls, StoreUnavailable("store down")), clock, margin_ms=1_000)
    assert await catch_up.run() == 0
    assert catch_up.down_since == 100_000 and catch_up.failures == 1
    clock.now = 300_000
    catch_up.lost()  # the link dropped again: the earlier loss still counts
    assert catch_up.down_since == 100_000


async def test_a_cancelled_run_is_left_for_the_next_link_up() -> None:
    clock = Clock()
    started = trio.Event()

    async def slow(since: int) -> int:
        started.set()
        await trio.sleep_forever()
        return 0

    catch_up = CatchUp(slow, clock, margin_ms=1_000)
    with trio.move_on_after(1) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(catch_up.run)
            await started.wait()
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert catch_up.down_since == 100_000


@pytest.mark.parametrize("margin", [0, 60_000])
async def test_the_margin_reaches_back_before_the_loss(margin: int) -> None:
    clock, calls = Clock(), []
    catch_up = CatchUp(recorder(calls), clock, margin_ms=margin)
    await catch_up.run()
    assert calls == [100_000 - margin]


async def test_a_loss_another_node_reports_counts_from_its_time_unless_ours_is_earlier() -> None:
    """`missed_since`: a slave died with packets it had not relayed (a CatchUp packet)."""
    clock, calls = Clock(), []
    catch_up = CatchUp(recorder(calls), clock, margin_ms=1_000)
    await catch_up.run()  # linked and caught up
    catch_up.missed_since(150_000)
    await catch_up.run()
    clock.now = 200_000
    catch_up.lost()  # our own link went down at 200 s ...
    catch_up.missed_since(250_000)  # ... before the other node's loss: ours counts
    await catch_up.run()
    assert calls == [99_000, 149_000, 199_000]
