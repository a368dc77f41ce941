"""The Flusher's write-through (vim_cluster.node.ws_server.Flusher with node/send_queue.py):
queues without a writer task write in one `try_send` per scheduler pass; what the socket does
not take goes on through the queue's writer task, first, whole frames never cut or reordered.
Against a stand-in socket that takes `room` bytes without waiting and records every write."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from vim_cluster.errors import CloseCode
from vim_cluster.node.send_queue import Close, SendQueue
from vim_cluster.node.ws_server import Flusher
from vim_cluster.protocol import frames as f
from vim_cluster.protocol.codec import OutFrame

from .test_send_queue import Socket


class DirectSocket(Socket):
    """Also writes without waiting: takes at most `room` bytes a call (None: everything)."""

    def __init__(self) -> None:
        super().__init__()
        self.room: int | None = None
        self.direct = 0  # try_send calls
        self.waited = 0  # send_all calls (the writer task's)
        self.crash = False  # a bug in the write

    def try_send(self, data: bytes) -> int:
        self.direct += 1
        if self.crash:
            raise RuntimeError("a bug")
        taken = len(data) if self.room is None else min(self.room, len(data))
        if taken:
            self.writes.append(data[:taken])
        return taken

    async def send_all(self, data: bytes) -> None:
        self.waited += 1
        await super().send_all(data)


def frame(n: int) -> OutFrame:
    return OutFrame(f.Pong(n))


@pytest.fixture
async def flusher() -> AsyncIterator[Flusher]:
    """A running Flusher (its task in the fixture's nursery)."""
    flusher = Flusher()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher.run)
        await trio.testing.wait_all_tasks_blocked()
        yield flusher
        nursery.cancel_scope.cancel()


def attached(ws: DirectSocket, flusher: Flusher, connection: trio.Nursery) -> SendQueue:
    """A queue on `ws` whose writers run in `connection` (its scope: the connection's)."""
    box = SendQueue(ws, 100, flusher=flusher)
    box.attach(connection, connection.cancel_scope)
    return box


async def test_queues_of_one_pass_write_directly_once_each_and_start_no_writer_task(flusher: Flusher) -> None:
    sockets = [DirectSocket() for _ in range(3)]
    with trio.fail_after(5):
        async with trio.open_nursery() as connections:
            queues = [attached(ws, flusher, connections) for ws in sockets]
            for n in range(4):  # four frames to each, within one pass
                for box in queues:
                    assert box.push(frame(n))
            await trio.testing.wait_all_tasks_blocked()
            assert len(connections.child_tasks) == 0  # no writer task was needed
            for ws in sockets:
                assert ws.pongs() == [0, 1, 2, 3]
                assert (ws.direct, ws.waited) == (1, 0)  # one write for the four frames
            queues[0].append(frame(4))  # a later pass: one more direct write
            await trio.testing.wait_all_tasks_blocked()
            assert (sockets[0].pongs(), sockets[0].direct) == ([0, 1, 2, 3, 4], 2)
            connections.cancel_scope.cancel()


async def test_what_the_socket_does_not_take_goes_first_through_the_writer_task(flusher: Flusher) -> None:
    ws = DirectSocket()
    ws.room = 7  # the socket's buffer takes 7 bytes: the middle of the first frame
    ws.gate = trio.Event()  # ... and then the writer must wait for the peer
    with trio.fail_after(5):
        async with trio.open_nursery() as connection:
            box = attached(ws, flusher, connection)
            box.push(frame(0))
            box.push(frame(1))
            await trio.testing.wait_all_tasks_blocked()
            assert ws.direct == 1 and len(ws.writes) == 1 and len(ws.writes[0]) == 7
            box.push(frame(2))  # queued behind the rest, for the writer
            for n in range(5):  # pongs must not replace the rest of a frame
                box.control(bytes((0x80 | 0xA, 1, n)))
            ws.gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert ws.pongs() == [0, 1, 2]  # whole frames, in order
            assert ws.direct == 1 and ws.waited >= 1  # the writer took over
            connection.cancel_scope.cancel()


@pytest.mark.parametrize("room", [None, 7, 0])
async def test_a_lone_frame_goes_directly_and_what_the_socket_does_not_take_through_the_writer(
        flusher: Flusher, room: int | None) -> None:
    """One frame a pass (each copy of a group message): written whole without a task, or its
    rest (room 7: the middle of the frame) or all of it (room 0) by the writer task, once."""
    ws = DirectSocket()
    ws.room = room
    with trio.fail_after(5):
        async with trio.open_nursery() as connection:
            box = attached(ws, flusher, connection)
            box.push(frame(0))
            await trio.testing.wait_all_tasks_blocked()
            box.push(frame(1))  # the next pass
            await trio.testing.wait_all_tasks_blocked()
            assert ws.pongs() == [0, 1]  # whole frames, in order, none twice
            if room is None:
                assert (ws.direct, ws.waited) == (2, 0) and len(connection.child_tasks) == 0
            else:
                assert ws.direct == 1 and ws.waited >= 1  # the writer took over, and still lingers
                assert len(ws.writes[0]) == (room or len(ws.writes[0]))
            connection.cancel_scope.cancel()


async def test_a_full_socket_leaves_everything_to_the_writer(flusher: Flusher) -> None:
    ws = DirectSocket()
    ws.room = 0
    with trio.fail_after(5):
        async with trio.open_nursery() as connection:
            box = attached(ws, flusher, connection)
            for n in range(3):
                box.push(frame(n))
            await trio.testing.wait_all_tasks_blocked()
            assert ws.pongs() == [0, 1, 2] and ws.waited == 1
            connection.cancel_scope.cancel()


async def test_an_abort_keeps_the_rest_of_a_frame_begun_then_closes(flusher: Flusher) -> None:
    ws = DirectSocket()
    ws.room = 5
    ws.gate = trio.Event()
    with trio.fail_after(5):
        async with trio.open_nursery() as connection:
            box = attached(ws, flusher, connection)
            box.push(frame(0))
            await trio.testing.wait_all_tasks_blocked()  # 5 bytes of frame 0 are out
            box.push(frame(1))
            box.abort(Close(CloseCode.SLOW_CONSUMER, "slow-consumer"))
            ws.gate.set()
            await trio.sleep_forever()
    assert connection.cancel_scope.cancelled_caught
    assert ws.pongs() == [0]  # finished whole; frame 1 dropped
    assert ws.closed() == (int(CloseCode.SLOW_CONSUMER), "slow-consumer")


async def test_a_close_goes_through_the_writer_after_what_was_queued(flusher: Flusher) -> None:
    ws = DirectSocket()
    with trio.fail_after(5):
        async with trio.open_nursery() as connection:
            box = attached(ws, flusher, connection)
            box.push(frame(0))
            assert box.close(Close(CloseCode.GOING_AWAY, "bye", frame(1)))
            await trio.sleep_forever()
    assert ws.pongs() == [0, 1]
    assert ws.closed() == (int(CloseCode.GOING_AWAY), "bye")


async def test_a_write_that_crashes_ends_its_connection_only(flusher: Flusher) -> None:
    good, bad = DirectSocket(), DirectSocket()
    bad.crash = True
    with trio.fail_after(5):
        async with trio.open_nursery() as first, trio.open_nursery() as second:
            attached(bad, flusher, first).append(frame(1))
            attached(good, flusher, second).append(frame(2))
            await trio.testing.wait_all_tasks_blocked()
            assert first.cancel_scope.cancel_called  # that connection ends
            assert not second.cancel_scope.cancel_called
            assert good.pongs() == [2] and bad.writes == []
            second.cancel_scope.cancel()


async def test_without_a_running_flusher_the_writer_task_writes() -> None:
    ws = DirectSocket()
    stopped = Flusher()  # never run (or stopped with its listener)
    with trio.fail_after(5):
        async with trio.open_nursery() as connection:
            attached(ws, stopped, connection).push(frame(0))
            await trio.testing.wait_all_tasks_blocked()
            assert ws.pongs() == [0] and (ws.direct, ws.waited) == (0, 1)
            connection.cancel_scope.cancel()
