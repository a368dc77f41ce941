"""The forward link's writer task (node/link.py `_writer`), driven with a fake connection and
socket: packets that the tasks runnable together push go out in one forward frame (issue 12:
fewer frames, fewer wake-ups of the peer)."""

from __future__ import annotations

from typing import Any, cast

import trio

from vim_cluster.node import link
from vim_cluster.protocol.forward_connection import Flush
from vim_cluster.tunables import DEFAULTS


class FakeConnection:
    """Packets waiting to be sent; a Flush sends them all as one frame."""

    def __init__(self) -> None:
        self.pending: list[str] = []

    def has_unsent(self) -> bool:
        return bool(self.pending)

    def ack_moved(self) -> bool:
        return False

    def send(self, what: Any) -> list[str]:
        assert isinstance(what, Flush)
        batch, self.pending = self.pending, []
        return batch


class FakeSocket:
    def __init__(self) -> None:
        self.frames: list[list[str]] = []

    async def send_message(self, message: list[str]) -> None:
        self.frames.append(message)
        await trio.lowlevel.checkpoint()


async def test_packets_pushed_by_tasks_runnable_together_go_in_one_frame() -> None:
    # The writer and a second producer become runnable in the same scheduler pass, in either
    # order (trio runs a pass's tasks forwards or backwards at random): the writer's one pass
    # before it flushes lets the producer's packet join. Without it, about half the rounds
    # send two frames.
    rounds = 20
    conn, ws = FakeConnection(), FakeSocket()
    peer: link.PeerLink[Any] = link.PeerLink("dept-1", cast(Any, None), cast(Any, None))  # the writer uses `wake`

    async def second(go: trio.Event, n: int) -> None:
        await go.wait()
        conn.pending.append(f"{n}b")
        peer.wake.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link._writer, cast(Any, ws), cast(Any, conn), peer, None, DEFAULTS)
            for n in range(rounds):
                await trio.testing.wait_all_tasks_blocked()
                go = trio.Event()
                nursery.start_soon(second, go, n)
                await trio.testing.wait_all_tasks_blocked()
                conn.pending.append(f"{n}a")
                peer.wake.set()  # the writer ...
                go.set()  # ... and the second producer run in the next pass
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert ws.frames == [[f"{n}a", f"{n}b"] for n in range(rounds)]
