"""A new session's offline replay waits until the master routes to it (SlaveLink.routed,
node/forward_link.py), so that what is stored for its user before is in the replay and what
comes after is relayed live. Driven without sockets."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio
import trio.testing

from vim_cluster.node.forward_link import SlaveLink
from vim_cluster.protocol import forward_frames as ff
from vim_cluster.protocol.forward import Unacked
from vim_cluster.protocol.forward_connection import Acked, ForwardConnection, PeerRole

from .test_delivery import RecordingSession, local_of


def session(session_id: str) -> Any:
    return SimpleNamespace(id=session_id, user_id=2, client="web", uuid=None)


def slave() -> SlaveLink:
    return SlaveLink("dept-1", "ws://127.0.0.1:9/forward", b"s" * 32, local_of("dept-1", RecordingSession("s-0", 9)),
                     clock_ms=lambda: 1_000)


async def test_a_session_opened_during_the_links_handshake_waits_for_the_master_to_route_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Seen in a chaos run (seed 310001): a user logged in to a restarted node while its link's
    handshake ran, after the hello that lists the node's sessions. The session replayed at once
    and the node's link-up catch-up read the store at once, but the master read the session's
    SessionOpen only a second later (after its own catch-up), so the messages stored in between
    went neither live nor into either: they came at the user's next catch-up, after newer ones.
    Now such a session's replay waits for the master's ack of its SessionOpen, as while linked."""
    link = slave()
    link.conn = ForwardConnection(PeerRole.SLAVE, "dept-1", b"s" * 32, stream=link.peer.stream)  # handshaking
    opened = session("s-1")
    link.session_opened(opened)
    replayed = trio.Event()

    async def replay() -> None:
        await link.routed(opened)
        replayed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(replay)
        await trio.testing.wait_all_tasks_blocked()
        assert not replayed.is_set()  # the master does not route to it yet
        [held] = [item for item in link.peer.stream.window.items if isinstance(item.packet, ff.SessionOpen)]
        link.link_event(link.peer, Acked([Unacked(held.seq, held.packet, None)]))  # it does now
        with trio.fail_after(1):
            await replayed.wait()


async def test_a_session_opened_while_unlinked_replays_at_once_and_one_whose_link_failed_stops_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Unlinked: the next hello lists the session (and its link-up catch-up covers it), so its
    replay does not wait. A handshake that fails releases the sessions that waited on it."""
    link = slave()
    unlinked = session("s-1")
    link.session_opened(unlinked)
    with trio.fail_after(1):
        await link.routed(unlinked)
    link.conn = ForwardConnection(PeerRole.SLAVE, "dept-1", b"s" * 32, stream=link.peer.stream)
    linking = session("s-2")
    link.session_opened(linking)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.routed, linking)
        await trio.testing.wait_all_tasks_blocked()
        link._link_down()  # the handshake failed
    assert trio.current_time() < 1  # released at once, not after link_routed_wait_s
