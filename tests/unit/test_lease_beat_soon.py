"""The node lease's heartbeat loop (vim_cluster.node.heartbeat.Lease.run): a beat every
lease_heartbeat_s, and one at once when asked (`beat_soon`: the master refused the node as not
registered), after which the interval starts over. Redis is not needed: the beat is recorded."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from vim_cluster.node.heartbeat import Lease


async def test_beat_soon_beats_at_once_and_the_interval_starts_over(autojump_clock: trio.testing.MockClock) -> None:
    lease = Lease(registry=None, runner=None, describe=None)  # type: ignore[arg-type]  # unused: the beat is replaced
    beats: list[float] = []
    start = trio.current_time()

    async def beat(republish: Any = None) -> bool:
        beats.append(round(trio.current_time() - start, 3))
        return True

    lease.beat = beat  # type: ignore[method-assign]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lease.run)
            await trio.sleep(2 * lease.beat_s + 1)
            assert beats == [lease.beat_s, 2 * lease.beat_s]
            lease.beat_soon()
            await trio.testing.wait_all_tasks_blocked()
            assert beats[-1] == 2 * lease.beat_s + 1  # at once
            await trio.sleep(lease.beat_s + 0.5)  # the interval counts from the beat at once
            assert beats == [lease.beat_s, 2 * lease.beat_s, 2 * lease.beat_s + 1, 3 * lease.beat_s + 1]
            lease.beat_soon()
            lease.beat_soon()  # asked twice before it ran: one beat
            await trio.testing.wait_all_tasks_blocked()
            assert len(beats) == 5
            nursery.cancel_scope.cancel()
