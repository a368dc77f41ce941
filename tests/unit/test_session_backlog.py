"""A session's backlog (node/local_sessions.py): frames that come while its send queue is full
wait in order and go out as the client reads, every later frame behind them; past the queue's
byte limit, or with nothing read for the idle timeout, the session is a slow consumer (4004).
Driven over a lockstep stream: the client reads exactly when the test reads."""

from __future__ import annotations

import trio
import trio.testing

from vim_cluster.errors import CloseCode
from vim_cluster.node.delivery import LocalDelivery
from vim_cluster.node.local_sessions import LocalSessions, Session
from vim_cluster.node.metrics import NodeMetrics
from vim_cluster.node.send_queue import SendQueue
from vim_cluster.node.ws_server import frame as ws_frame
from vim_cluster.protocol.codec import OutFrame

from .test_catch_up_asked import StreamSocket, deliver, frame


def bob_over(stream: trio.abc.SendStream, limit: int, byte_limit: int = 1 << 62) -> tuple[Session, LocalSessions]:
    """bob (user 2) with a send queue of `limit` frames (`byte_limit` bytes) writing to `stream`."""
    bob = Session("s-2", 2, "web", None, SendQueue(StreamSocket(stream), limit, byte_limit), trio.CancelScope(),
                  idle_timeout=60.0)
    sessions = LocalSessions()
    sessions.add(bob)
    return bob, sessions


def wire(frames: list[OutFrame]) -> bytes:
    return b"".join(ws_frame(f.payload(False), False) for f in frames)


async def read(receiving: trio.abc.ReceiveStream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += await receiving.receive_some()
    return bytes(got)


async def test_frames_past_a_full_queue_wait_in_order_and_reach_a_client_that_reads() -> None:
    # Five queues' worth in one pass (a forward frame of a resent window): before, bob was
    # closed 4004 at the 9th frame though he read all the time.
    sending, receiving = trio.testing.lockstep_stream_one_way_pair()
    bob, sessions = bob_over(sending, limit=8)
    local = LocalDelivery("dept-1", sessions, NodeMetrics("dept-1"))
    first = [frame(n) for n in range(1, 41)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bob.send_queue.attach(nursery, bob.cancel_scope)
            for item in first:
                sessions.deliver([2], item)
            assert bob.close_code is None and bob.backlog and len(bob.send_queue) <= 8
            got = await read(receiving, len(wire(first[:20])))
            later = frame(41)
            bob.push(later)  # room in his queue by now: still behind what waits
            assert bob.backlog and bob.backlog[-1] is later
            assert not bob.takes(1, 10)  # a catch-up or a held release waits behind the backlog too
            relayed = deliver(42)  # and a Deliver from the forward link, after it
            local.apply_deliver(relayed.users, relayed.frame, relayed.message_id, None, relayed.ts, relayed.ts)
            total = len(wire([*first, later, frame(42)]))
            got += await read(receiving, total - len(got))
            await trio.testing.wait_all_tasks_blocked()
            assert bob.backlog is None and bob.backlog_bytes == 0 and bob.takes(1, 10)
            nursery.cancel_scope.cancel()
    assert got == wire([*first, later, frame(42)])
    assert bob.close_code is None


async def test_a_backlog_past_the_queues_byte_limit_closes_the_session_4004() -> None:
    sending, _ = trio.testing.lockstep_stream_one_way_pair()  # bob reads nothing
    size = len(frame(1).payload(False))
    bob, sessions = bob_over(sending, limit=4, byte_limit=10 * size)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bob.send_queue.attach(nursery, bob.cancel_scope)
            n = 0
            while bob.close_code is None:
                n += 1
                sessions.deliver([2], frame(n))
                await trio.testing.wait_all_tasks_blocked()
            # the writer's batch, 4 in the queue, 10 frames' bytes in the backlog: the next is past it
            assert 10 < n <= 1 + 4 + 10 + 1
            assert bob.close_code is CloseCode.SLOW_CONSUMER and not bob.backlog and bob.backlog_bytes == 0
            nursery.cancel_scope.cancel()


async def test_a_backlog_the_client_reads_nothing_of_closes_it_4004_at_its_idle_timeout(autojump_clock) -> None:
    sending, receiving = trio.testing.lockstep_stream_one_way_pair()
    bob, sessions = bob_over(sending, limit=4)
    async with trio.open_nursery() as nursery:
        bob.send_queue.attach(nursery, bob.cancel_scope)
        for n in range(1, 41):
            sessions.deliver([2], frame(n))
        await read(receiving, 1)  # he reads a little, then nothing
        await trio.sleep(59)  # autojump_clock
        assert bob.close_code is None and bob.backlog
        await trio.sleep(2)
        assert bob.close_code is CloseCode.SLOW_CONSUMER and not bob.backlog
        nursery.cancel_scope.cancel()


async def test_a_kick_ends_the_backlogs_task_and_drops_what_waits() -> None:
    sending, receiving = trio.testing.lockstep_stream_one_way_pair()
    bob, sessions = bob_over(sending, limit=4)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bob.send_queue.attach(nursery, bob.cancel_scope)
            for n in range(1, 41):
                sessions.deliver([2], frame(n))
            await trio.testing.wait_all_tasks_blocked()
            bob.close_now(CloseCode.OTHER_LOGIN)
            assert not bob.backlog and bob.backlog_bytes == 0
            nursery.start_soon(receiving.receive_some)  # the writer's batch goes, then the queue ends
    assert bob.backlog is None


async def test_a_backlog_holds_up_only_its_own_session() -> None:
    # bob reads nothing: his frames wait in his backlog, and the forward link's Delivers (a
    # packet of many frames for both) go on to dave, who reads, at once.
    to_bob, _ = trio.testing.lockstep_stream_one_way_pair()
    to_dave, at_dave = trio.testing.lockstep_stream_one_way_pair()
    bob, sessions = bob_over(to_bob, limit=4)
    dave = Session("s-4", 4, "web", None, SendQueue(StreamSocket(to_dave), 4), trio.CancelScope(), idle_timeout=60.0)
    sessions.add(dave)
    local = LocalDelivery("dept-1", sessions, NodeMetrics("dept-1"))
    frames = [frame(n) for n in range(1, 31)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for session in (bob, dave):
                session.send_queue.attach(nursery, session.cancel_scope)
            for item in frames:  # sync: the link's reader never waits for either
                local.local_sessions.deliver([2, 4], item)
            got = await read(at_dave, len(wire(frames)))
            assert got == wire(frames) and dave.close_code is None
            assert bob.backlog and bob.close_code is None
            nursery.cancel_scope.cancel()
