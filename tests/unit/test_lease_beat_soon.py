"""The node lease's heartbeat loop (vim_cluster.node.heartbeat.Lease.run): a beat every
lease_heartbeat_s, and one at once when asked (`beat_soon`: the master refused the node as not
registered), after which the interval starts over. Redis is not needed: the beat is recorded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import trio
import trio.testing

from vim_cluster.node.heartbeat import Lease, owner_is_dead_here, owner_token


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


def test_a_lock_of_this_host_is_dead_when_its_process_is_gone_even_under_our_own_pid() -> None:
    """A container's node is pid 1 under the same host name at every start: the lock its crashed
    predecessor left names our pid, and must count as dead (else the restart loops on "held by
    another live process" until the TTL lapses), while our own lock is alive."""
    host, pid = socket.gethostname(), os.getpid()
    assert not owner_is_dead_here(owner_token())  # this process
    assert owner_is_dead_here(f"{host}/{pid}/{'0' * 8}.{'1' * 16}")  # our pid, another process's token
    assert owner_is_dead_here(f"{host}/{pid}/{'2' * 16}")  # our pid, an older version's token
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that ran here and is gone
    assert owner_is_dead_here(f"{host}/{child.pid}/x.y")
    assert not owner_is_dead_here(f"{host}/1/x.y")  # a running process (the sandbox's init)
    assert not owner_is_dead_here(f"another-host/{child.pid}/x.y")  # another host's: its TTL decides
