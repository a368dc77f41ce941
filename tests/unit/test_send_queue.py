"""A client connection's SendQueue (vim_cluster.node.send_queue) against a stand-in socket
that records each write and can be made to block or fail: order, one write per batch, the
on-demand writer, limits, close, abort, pongs. Synchronised by trio's
wait_all_tasks_blocked and events; timers (the writer's linger) on trio's autojump clock."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
import trio.testing

from vim_cluster.errors import CloseCode, ErrorKind
from vim_cluster.node.send_queue import Close, SendQueue
from vim_cluster.protocol import frames as f
from vim_cluster.protocol.codec import OutFrame
from vim_cluster.tunables import DEFAULTS

CLOSE = 0x8
PONG = 0xA


class Socket:
    """What SendQueue uses of a ServerSocket; `gate` holds writes back while it is not set."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.gate = trio.Event()
        self.gate.set()
        self.fail = False

    async def send_all(self, data: bytes) -> None:
        await self.gate.wait()
        if self.fail:
            raise trio.BrokenResourceError("gone")
        self.writes.append(data)

    def close_frame(self, code: int, reason: str) -> bytes:
        payload = code.to_bytes(2, "big") + reason.encode()
        return bytes((0x80 | CLOSE, len(payload))) + payload

    def frames(self) -> list[tuple[int, bytes]]:
        """Every frame written, as (opcode, payload)."""
        data, out = b"".join(self.writes), []
        while data:
            opcode, length, at = data[0] & 0x0F, data[1] & 0x7F, 2
            if length == 126:
                length, at = int.from_bytes(data[2:4], "big"), 4
            out.append((opcode, data[at:at + length]))
            data = data[at + length:]
        return out

    def pongs(self) -> list[int]:
        return [json.loads(p)["message"]["ts"] for op, p in self.frames() if op == 0x1]

    def closed(self) -> tuple[int, str] | None:
        closes = [p for op, p in self.frames() if op == CLOSE]
        return (int.from_bytes(closes[0][:2], "big"), closes[0][2:].decode()) if closes else None


def frame(n: int) -> OutFrame:
    return OutFrame(f.Pong(n))


def queue(ws: Socket, limit: int, byte_limit: int = 1 << 62) -> SendQueue:
    return SendQueue(ws, limit, byte_limit)


@contextlib.asynccontextmanager
async def writing_frame_0(limit: int, byte_limit: int = 1 << 62) -> AsyncIterator[tuple[Socket, SendQueue, trio.Nursery]]:
    """A queue attached to `nursery` (its connection scope) whose writer took frame 0 and
    blocks writing it (still counted): the peer reads nothing until `ws.gate` is set."""
    ws = Socket()
    ws.gate = trio.Event()
    box = queue(ws, limit, byte_limit)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            box.attach(nursery, nursery.cancel_scope)
            assert box.push(frame(0))
            await trio.testing.wait_all_tasks_blocked()
            yield ws, box, nursery


async def waiting_for(nursery: trio.Nursery, wait: Callable[[], Awaitable[None]]) -> trio.Event:
    """Starts `wait` in `nursery`; the event it sets once it returned, checked not set while
    every task is blocked."""
    waited = trio.Event()

    async def run() -> None:
        await wait()
        waited.set()

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    assert not waited.is_set()
    return waited


async def test_frames_go_out_in_order_in_one_write_and_the_writer_exists_only_while_there_is_work(
        autojump_clock: trio.testing.MockClock) -> None:
    ws = Socket()
    box = queue(ws, limit=100)
    with trio.fail_after(5 * DEFAULTS.client_linger_s):
        async with trio.open_nursery() as nursery:
            box.attach(nursery, nursery.cancel_scope)
            assert len(nursery.child_tasks) == 0  # idle: no writer task
            for n in range(5):
                assert box.push(frame(n))
            box.append(frame(5))
            assert len(nursery.child_tasks) == 1
            await trio.testing.wait_all_tasks_blocked()
            assert ws.pongs() == [0, 1, 2, 3, 4, 5]
            assert len(ws.writes) == 1  # one send_all for the whole batch
            await trio.sleep(2 * DEFAULTS.client_linger_s)  # the writer lingers, then ends
            assert len(nursery.child_tasks) == 0
            assert box.push(frame(6))  # and starts again for the next frame
            await trio.testing.wait_all_tasks_blocked()
            assert ws.pongs() == [0, 1, 2, 3, 4, 5, 6]
            nursery.cancel_scope.cancel()


async def test_frames_queued_before_attach_are_sent_once_attached() -> None:
    ws = Socket()
    box = queue(ws, limit=10)
    box.append(frame(1))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            box.attach(nursery, nursery.cancel_scope)
            await trio.testing.wait_all_tasks_blocked()
            assert ws.pongs() == [1]
            nursery.cancel_scope.cancel()


async def test_a_full_queue_refuses_pushes_but_not_replies_and_room_waits_for_the_writer() -> None:
    async with writing_frame_0(limit=3) as (ws, box, nursery):
        assert all(box.push(frame(n)) for n in (1, 2, 3))
        assert not box.push(frame(4))  # three wait: a slow consumer
        box.append(frame(5))  # the connection's own replies are bounded elsewhere
        assert len(box) == 4
        waited = await waiting_for(nursery, box.room)
        ws.gate.set()
        await waited.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert ws.pongs() == [0, 1, 2, 3, 5]
        assert len(ws.writes) == 2  # frame 0, then the four that waited in one write
        nursery.cancel_scope.cancel()


async def test_room_for_several_frames_waits_until_that_many_fit_and_an_abort_ends_the_wait() -> None:
    # What a catch-up or a held packet's release waits for before it pushes (a frame at a time).
    async with writing_frame_0(limit=3) as (ws, box, nursery):
        assert box.push(frame(1)) and box.takes(2) and not box.takes(3)
        assert not box.takes(50)  # more than the queue holds: only once it is empty
        waited = await waiting_for(nursery, functools.partial(box.room, 3))
        box.abort(Close(CloseCode.SLOW_CONSUMER, "slow-consumer"))  # closing: it takes (drops) anything
        await waited.wait()
        nursery.cancel_scope.cancel()


async def test_a_close_ends_every_wait_for_room_at_once() -> None:
    # A kick queues a close while the offline replay waits for room (sparing half the queue)
    # and the client reads nothing: the replay waited for its own deadline (the idle timeout),
    # then closed the client 4004 in place of the kick's code.
    async with writing_frame_0(limit=4) as (ws, box, nursery):
        assert box.push(frame(1)) and box.push(frame(2)) and not box.takes(1, spare=True)
        spared = await waiting_for(nursery, functools.partial(box.room, 1, 0, True))
        freed = await waiting_for(nursery, box.freed)
        assert box.close(Close(CloseCode.OTHER_LOGIN, "other login"))
        await spared.wait()
        await freed.wait()
        nursery.cancel_scope.cancel()


async def test_a_waiting_caller_that_spares_half_the_queue_never_takes_the_places_the_reader_waits_for() -> None:
    # A catch-up that pushed as soon as a place was free kept the queue full: the connection's
    # reader, which waits for room() before it reads the client's next request (its close),
    # waited until the catch-up ended (a client's close unanswered for a minute).
    async with writing_frame_0(limit=8, byte_limit=1 << 20) as (ws, box, nursery):
        pushed = 0
        while box.takes(1, 10, spare=True):
            assert box.push(frame(100 + pushed))
            pushed += 1
        assert len(box._items) == 4, "it stops with half the queue free"
        assert box.takes(1) and box.takes(4) and not box.takes(5)
        with trio.move_on_after(1) as waited:
            await box.room()  # the reader's wait: at once
        assert not waited.cancelled_caught
        nursery.cancel_scope.cancel()


async def test_room_for_bytes_comes_once_the_frame_being_written_is_written() -> None:
    # Nothing else queued: no batch starts that would wake the wait, only the write's end.
    size = len(frame(0).payload(False))
    async with writing_frame_0(limit=100, byte_limit=2 * size) as (ws, box, nursery):
        assert box.takes(1, size) and not box.takes(1, 2 * size)  # frame 0's bytes count until written
        waited = await waiting_for(nursery, functools.partial(box.room, 1, 2 * size))
        ws.gate.set()
        await waited.wait()
        nursery.cancel_scope.cancel()


async def test_close_sends_its_frame_and_the_close_frame_then_ends_the_connection_scope() -> None:
    ws = Socket()
    box = queue(ws, limit=10)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            box.attach(nursery, nursery.cancel_scope)
            box.push(frame(1))
            assert box.close(Close(CloseCode.OTHER_LOGIN, "other login", frame(2)))
            assert box.push(frame(3))  # after the close: dropped, not refused
            await trio.sleep_forever()
    assert nursery.cancel_scope.cancelled_caught
    assert ws.pongs() == [1, 2]
    assert ws.closed() == (int(CloseCode.OTHER_LOGIN), "other login")


async def test_close_is_refused_when_the_queue_is_full() -> None:
    async with writing_frame_0(limit=1) as (_, box, nursery):
        box.push(frame(1))
        assert not box.close(Close(CloseCode.OTHER_LOGIN, "other login"))
        nursery.cancel_scope.cancel()


async def test_abort_drops_what_waits_and_closes_after_the_write_in_progress() -> None:
    async with writing_frame_0(limit=10) as (ws, box, nursery):
        box.push(frame(1))
        box.abort(Close(CloseCode.SLOW_CONSUMER, "slow-consumer"))
        ws.gate.set()
        await trio.sleep_forever()
    assert nursery.cancel_scope.cancelled_caught
    assert ws.pongs() == [0]  # whole; frame 1 dropped
    assert ws.closed() == (int(CloseCode.SLOW_CONSUMER), "slow-consumer")


async def test_a_newer_pong_replaces_one_still_waiting() -> None:
    async with writing_frame_0(limit=10) as (ws, box, nursery):
        for n in range(100):  # a ping flood: one pong waits, the newest
            box.control(bytes((0x80 | PONG, 1, n)))
        assert len(box) == 1
        ws.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert [(op, p) for op, p in ws.frames() if op == PONG] == [(PONG, bytes((99,)))]
        nursery.cancel_scope.cancel()


async def test_a_peer_gone_while_sending_ends_the_connection_scope() -> None:
    ws = Socket()
    ws.fail = True
    box = queue(ws, limit=10)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            box.attach(nursery, nursery.cancel_scope)
            box.push(frame(1))
            await trio.sleep_forever()
    assert nursery.cancel_scope.cancelled_caught
    assert box.push(frame(2)) and len(box) == 0  # closing: nothing queues any more


async def test_a_byte_limit_refuses_pushes_counting_the_frame_being_written_until_it_is() -> None:
    """A client that stops reading holds at most `byte_limit` bytes, whatever the frame count."""
    async with writing_frame_0(limit=100, byte_limit=3 * len(frame(0).encoded(False))) as (ws, box, nursery):
        assert box.push(frame(1)) and box.push(frame(2))
        assert not box.push(frame(3))  # 3 frames' bytes wait (frame 0's too): a slow consumer
        ws.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert ws.pongs() == [0, 1, 2]
        assert all(box.push(frame(n)) for n in (4, 5, 6))  # written: the bytes are free again
        nursery.cancel_scope.cancel()


async def test_the_byte_limit_counts_a_text_frame_s_utf8_bytes_not_its_characters() -> None:
    """Chinese is 3 bytes a character in UTF-8: a limit counted in characters let a slow
    client hold nearly 3 times the bytes it allows."""
    def wide() -> OutFrame:
        return OutFrame(f.ErrorReply(ErrorKind.INVALID, "消息" * 200))

    size, characters = len(wide().payload(False)), len(wide().encoded(False))
    assert size > 2 * characters
    async with writing_frame_0(limit=100, byte_limit=len(frame(0).payload(False)) + size + size // 2) \
            as (ws, box, nursery):
        assert box.push(wide())
        assert not box.push(wide())  # in characters, 2 would fit
        ws.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert len(ws.frames()) == 2 and box.push(wide())  # written: the bytes are free again
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("binary", [False, True])
async def test_frames_carry_the_connection_s_mode_but_a_bare_pong_is_text(binary: bool) -> None:
    ws = Socket()
    box = queue(ws, limit=10)
    box.binary = binary
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            box.attach(nursery, nursery.cancel_scope)
            box.push(frame(7))
            box.push(OutFrame(f.RawPong()))
            await trio.testing.wait_all_tasks_blocked()
            payload = frame(7).encoded(binary)
            assert ws.frames() == [(0x2 if binary else 0x1, payload.encode() if isinstance(payload, str) else payload),
                                   (0x1, b"pong")]
            nursery.cancel_scope.cancel()
