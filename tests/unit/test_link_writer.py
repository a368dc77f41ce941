"""The forward link's writer task (node/link.py `_writer`), driven with a fake connection and
socket: packets that the tasks runnable together push go out in one forward frame (issue 12:
fewer frames, fewer wake-ups of the peer), and a producer that never stops does not hold the
flush back for more than GATHER_PASSES scheduler passes."""

from __future__ import annotations

from typing import Any, cast

import pytest
import trio
import trio.testing

from vim_cluster.node import link
from vim_cluster.protocol.forward_connection import Flush, Heartbeat, LocalProtocolError
from vim_cluster.tunables import DEFAULTS


class FakeWindow:
    def __init__(self) -> None:
        self.next_seq = 1


class FakeStream:
    def __init__(self) -> None:
        self.window = FakeWindow()


class FakeConnection:
    """Packets waiting to be sent; a Flush sends them all as one frame."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.stream = FakeStream()
        self.ack_pending = False  # an ack to send (packets received since the last one)
        self.ended: str | None = None  # as ForwardConnection's once its link ended: nothing to send, send() refuses

    def push(self, packet: str) -> None:
        self.pending.append(packet)
        self.stream.window.next_seq += 1

    def has_unsent(self) -> bool:
        return bool(self.pending) and self.ended is None

    def ack_moved(self) -> bool:
        return self.ack_pending and self.ended is None

    def send(self, what: Any) -> list[str]:
        assert isinstance(what, Flush | Heartbeat)
        if self.ended is not None:
            raise LocalProtocolError(f"cannot send {type(what).__name__}: the link ended")
        if isinstance(what, Heartbeat):
            return ["beat"]
        batch, self.pending = self.pending + ["ack"] * self.ack_pending, []
        self.ack_pending = False
        return batch


class FakeSocket:
    def __init__(self) -> None:
        self.frames: list[list[str]] = []

    async def send_message(self, message: list[str]) -> None:
        self.frames.append(message)
        await trio.lowlevel.checkpoint()


def writer_peer(conn: FakeConnection) -> link.PeerLink[Any]:
    """A PeerLink as the writer sees it: its wake-up, and the window packets are pushed to."""
    return link.PeerLink("dept-1", cast(Any, conn.stream), cast(Any, None))


async def test_packets_pushed_by_tasks_runnable_together_go_in_one_frame() -> None:
    # The writer and a second producer become runnable in the same scheduler pass, in either
    # order (trio runs a pass's tasks forwards or backwards at random): the writer's one pass
    # before it flushes lets the producer's packet join. Without it, about half the rounds
    # send two frames.
    rounds = 20
    conn, ws = FakeConnection(), FakeSocket()
    peer = writer_peer(conn)

    async def second(go: trio.Event, n: int) -> None:
        await go.wait()
        conn.push(f"{n}b")
        peer.wake.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link._writer, cast(Any, ws), cast(Any, conn), peer, None, DEFAULTS)
            for n in range(rounds):
                await trio.testing.wait_all_tasks_blocked()
                go = trio.Event()
                nursery.start_soon(second, go, n)
                await trio.testing.wait_all_tasks_blocked()
                conn.push(f"{n}a")
                peer.wake.set()  # the writer ...
                go.set()  # ... and the second producer run in the next pass
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert ws.frames == [[f"{n}a", f"{n}b"] for n in range(rounds)]


async def test_a_link_that_ends_while_the_writer_gathers_is_not_written_to() -> None:
    # The link ends (its reader took a refusal, say) in the pass the writer wakes in, before or
    # after the writer runs: it must not send on the ended connection (that raised, and the
    # node exited: found by the chaos test), only wait for its stop.
    for _ in range(20):
        conn, ws = FakeConnection(), FakeSocket()
        peer = writer_peer(conn)

        async def end_link(go: trio.Event, conn: FakeConnection) -> None:
            await go.wait()
            conn.ended = "refused"

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link._writer, cast(Any, ws), cast(Any, conn), peer, None, DEFAULTS)
                go = trio.Event()
                nursery.start_soon(end_link, go, conn)
                await trio.testing.wait_all_tasks_blocked()
                conn.push("late")
                peer.wake.set()
                go.set()
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
        assert ws.frames == []


async def test_a_link_that_ends_when_a_heartbeat_is_due_gets_no_heartbeat(mock_clock: trio.testing.MockClock) -> None:
    # The link ends (its reader took a refusal and sends its replies before stop() cancels
    # the writer) in the pass in which the writer's idle time runs out, before or after the
    # writer runs: no heartbeat goes on the ended connection (send() raised
    # LocalProtocolError, which ended the node), and a writer that runs first beats as usual.
    beats = 0
    for _ in range(20):
        conn, ws = FakeConnection(), FakeSocket()
        peer = writer_peer(conn)

        async def end_link(at: float, conn: FakeConnection) -> None:
            await trio.sleep_until(at)
            conn.ended = "refused"

        async with trio.open_nursery() as nursery:  # the clock stands still: no fail_after
            nursery.start_soon(link._writer, cast(Any, ws), cast(Any, conn), peer, None, DEFAULTS)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(end_link, trio.current_time() + DEFAULTS.link_beat_s, conn)
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(DEFAULTS.link_beat_s)  # both deadlines pass: both tasks run in one pass
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert ws.frames in ([], [["beat"]])
        beats += len(ws.frames)
    assert 0 < beats < 20, beats  # the end came first in some rounds, second in others


async def test_a_bare_ack_waits_for_a_batch_unless_the_peer_waits_on_it(mock_clock: trio.testing.MockClock) -> None:
    # A bare ack is held link_ack_delay_s to ride on a batch; the ack of a SessionOpen (the
    # new session's offline replay waits for it: +20 ms at login) goes at once.
    conn, ws = FakeConnection(), FakeSocket()
    peer = writer_peer(conn)
    async with trio.open_nursery() as nursery:  # the clock stands still: no fail_after
        nursery.start_soon(link._writer, cast(Any, ws), cast(Any, conn), peer, None, DEFAULTS)
        await trio.testing.wait_all_tasks_blocked()
        conn.ack_pending = True  # packets came in (the reader wakes the writer after each)
        peer.wake.set()
        await trio.testing.wait_all_tasks_blocked()
        assert ws.frames == []  # held
        mock_clock.jump(DEFAULTS.link_ack_delay_s)
        await trio.testing.wait_all_tasks_blocked()
        assert ws.frames == [["ack"]]
        conn.ack_pending = True  # a SessionOpen came in
        peer.ack_now = True
        peer.wake.set()
        await trio.testing.wait_all_tasks_blocked()
        assert ws.frames == [["ack"], ["ack"]]  # no time went by
        assert not peer.ack_now
        nursery.cancel_scope.cancel()


async def test_a_producer_that_never_stops_holds_a_flush_back_at_most_gather_passes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Every pass the writer lets go by brings a packet: the flush waits GATHER_PASSES passes,
    # then sends what they brought.
    conn, ws = FakeConnection(), FakeSocket()
    peer = writer_peer(conn)
    real = trio.lowlevel.checkpoint
    armed = False  # from the writer's wake-up to its first send
    passes = 0

    async def pass_that_brings_a_packet() -> None:
        nonlocal passes
        if armed:
            passes += 1
            conn.push(f"p{passes}")
        await real()

    async def send_message(message: list[str]) -> None:
        nonlocal armed
        armed = False
        ws.frames.append(message)

    monkeypatch.setattr(trio.lowlevel, "checkpoint", pass_that_brings_a_packet)
    monkeypatch.setattr(ws, "send_message", send_message)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link._writer, cast(Any, ws), cast(Any, conn), peer, None, DEFAULTS)
            await trio.testing.wait_all_tasks_blocked()
            conn.push("first")
            armed = True
            peer.wake.set()
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert ws.frames[0] == ["first"] + [f"p{n}" for n in range(1, link.GATHER_PASSES + 1)]
