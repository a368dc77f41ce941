"""CatchUp's bookkeeping (node/catch_up.py): from when a link-up re-delivers, that runs never
overlap, that a failed run is tried again while linked, and that a cancelled one is left for
the next link-up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import structlog.testing
import trio

from vim_cluster.errors import StoreUnavailable
from vim_cluster.node.catch_up import RETRY_CAP_S, CatchUp


class Clock:
    def __init__(self) -> None:
        self.now = 100_000

    def __call__(self) -> int:
        return self.now


def recorder(calls: list[int], fail: BaseException | None = None) -> Callable[[int], Awaitable[int]]:
    async def deliver_since(since: int) -> int:
        calls.append(since)
        if fail is not None:
            raise fail
        return 3
    return deliver_since


async def test_first_link_up_catches_up_from_the_node_start_minus_the_margin() -> None:
    clock = Clock()
    calls: list[int] = []
    catch_up = CatchUp(recorder(calls), clock, margin_ms=1_000)
    clock.now += 5_000
    assert await catch_up.run() == 3
    assert calls == [99_000]
    assert catch_up.down_since is None


async def test_a_link_up_without_a_loss_since_the_last_catch_up_sends_nothing() -> None:
    clock = Clock()
    calls: list[int] = []
    catch_up = CatchUp(recorder(calls), clock, margin_ms=1_000)
    await catch_up.run()
    assert await catch_up.run() == 0
    assert calls == [99_000]


async def test_the_first_loss_counts_until_the_next_catch_up() -> None:
    clock = Clock()
    calls: list[int] = []
    catch_up = CatchUp(recorder(calls), clock, margin_ms=1_000)
    await catch_up.run()
    clock.now = 200_000
    catch_up.lost()
    clock.now = 210_000
    catch_up.lost()  # a failed attempt to link again: still down since 200 s
    await catch_up.run()
    assert calls == [99_000, 199_000]


async def test_a_failed_run_is_left_for_the_next_link_up() -> None:
    clock = Clock()
    calls: list[int] = []
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
    clock = Clock()
    calls: list[int] = []
    catch_up = CatchUp(recorder(calls), clock, margin_ms=margin)
    await catch_up.run()
    assert calls == [100_000 - margin]


async def test_a_loss_another_node_reports_counts_from_its_time_unless_ours_is_earlier() -> None:
    """`missed_since`: a slave died with packets it had not relayed (a CatchUp packet)."""
    clock = Clock()
    calls: list[int] = []
    catch_up = CatchUp(recorder(calls), clock, margin_ms=1_000)
    await catch_up.run()  # linked and caught up
    catch_up.missed_since(150_000)
    await catch_up.run()
    clock.now = 200_000
    catch_up.lost()  # our own link went down at 200 s ...
    catch_up.missed_since(250_000)  # ... before the other node's loss: ours counts
    await catch_up.run()
    assert calls == [99_000, 149_000, 199_000]


def flaky(calls: list[int], failing: int) -> Callable[[int], Awaitable[int]]:
    """deliver_since failing its first `failing` calls (the store down), then sending 3."""
    async def deliver_since(since: int) -> int:
        calls.append(since)
        if len(calls) <= failing:
            raise StoreUnavailable("store down")
        return 3
    return deliver_since


async def test_a_failed_run_is_tried_again_while_linked_until_the_store_answers(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A session that stays connected must not wait for its next login: the run is tried
    again after retry_s, doubling up to RETRY_CAP_S; `failed` tells waiters at the first
    failure."""
    clock = Clock()
    calls: list[int] = []
    catch_up = CatchUp(flaky(calls, failing=8), clock, margin_ms=1_000, retry_s=1.0)
    failed = trio.Event()
    tries: list[float] = []
    real = catch_up.deliver_since

    async def timed(since: int) -> int:
        tries.append(trio.current_time())
        return await real(since)

    catch_up.deliver_since = timed
    start = trio.current_time()
    with trio.fail_after(600):
        assert await catch_up.run_until_done(failed) == 3
    assert calls == [99_000] * 9 and failed.is_set()
    assert catch_up.down_since is None and catch_up.failures == 8 and not catch_up.last_failed
    gaps = [b - a for a, b in zip([start, *tries], tries, strict=False)][1:]
    for attempt, gap in enumerate(gaps):  # full jitter: between half the ceiling and the ceiling
        ceiling = min(RETRY_CAP_S, 1.0 * 2 ** attempt)
        assert ceiling / 2 - 1e-6 <= gap <= ceiling + 1e-6
    assert max(gaps) > RETRY_CAP_S / 2


async def test_a_run_that_succeeds_at_once_is_not_tried_again_and_never_sets_failed() -> None:
    clock = Clock()
    calls: list[int] = []
    catch_up = CatchUp(recorder(calls), clock, margin_ms=1_000)
    failed = trio.Event()
    assert await catch_up.run_until_done(failed) == 3
    assert calls == [99_000] and not failed.is_set()


async def test_retries_cut_off_by_the_link_going_down_are_left_for_the_next_link_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = Clock()
    calls: list[int] = []
    catch_up = CatchUp(flaky(calls, failing=100), clock, margin_ms=1_000)
    with trio.move_on_after(10):
        await catch_up.run_until_done()
    assert len(calls) > 2 and catch_up.down_since == 100_000 and catch_up.last_failed
    catch_up.deliver_since = recorder(calls)
    assert await catch_up.run() == 3  # the next link-up
    assert calls[-1] == 99_000 and catch_up.down_since is None


async def test_runs_never_overlap_and_a_second_caller_leaves_the_retries_to_the_first(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Two runs at once would interleave their users' pages (a later `since` first); two retry
    loops would ask a store that is down twice as often."""
    clock = Clock()
    running = most = 0
    store_up = False
    calls: list[int] = []

    async def deliver_since(since: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            calls.append(since)
            await trio.sleep(0.1)
            if not store_up:
                raise StoreUnavailable("store down")
            return 1
        finally:
            running -= 1

    catch_up = CatchUp(deliver_since, clock, margin_ms=0)
    results: list[int] = []

    async def call() -> None:
        results.append(await catch_up.run_until_done())

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            nursery.start_soon(call)
            await trio.sleep(5)
            assert results == [0]  # the second failed once and left the retries to the first
            tries = len(calls)
            await trio.sleep(20)
            assert len(calls) - tries <= 4  # one loop: about 2 + 4 + 8 + 16 s apart
            store_up = True
    assert most == 1 and results == [0, 1] and catch_up.down_since is None


async def test_a_run_that_crashes_otherwise_is_given_up_with_its_range_in_the_log() -> None:
    """Only a store that does not answer is worth trying again: a bug, or a row the store
    cannot read, would fail every try and re-push every user before it each time; kept for the
    next link-up (days later), its range would re-send days."""
    clock = Clock()
    calls: list[int] = []
    catch_up = CatchUp(recorder(calls, ValueError("a row it cannot read")), clock, margin_ms=1_000)
    failed = trio.Event()
    with structlog.testing.capture_logs() as logs, trio.fail_after(5):
        assert await catch_up.run_until_done(failed) == 0
    assert calls == [99_000] and not failed.is_set() and not catch_up.last_failed
    assert catch_up.down_since is None and catch_up.failures == 1  # given up: it would crash again
    assert [(e["event"], e["since_ms"]) for e in logs] == [("catch_up_crashed", 99_000)]
