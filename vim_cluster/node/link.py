"""The trio side of one forward link: moves bytes between a WebSocket and a ForwardConnection
(protocol/forward_connection.py, where every decision is made) and hands the connection's events
to the owner the peer was built with.

Once authenticated, one task reads (each message into the connection, its events to the owner,
the connection's own replies out), one writes (batches of queued packets with the current ack,
or a bare ack after link_ack_delay_s, or a beat every link_beat_s). A link that hears nothing for
link_dead_after_s is dropped (the node's Tunables, given to `pump`); the owner reconnects (slave) or waits for the slave to (master). Nothing
is lost: what is not acked stays in the peer's UnackedWindow and is resent on the next link.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

import attrs
import trio
from trio_websocket import ConnectionClosed

from ..protocol.forward import PeerStream
from ..protocol.forward_connection import (
    MAX_FRAME,
    EndReason,
    Event,
    Flush,
    ForwardConnection,
    Heartbeat,
    LinkEnded,
)
from ..protocol.forward_frames import Packet
from ..tunables import Tunables

__all__ = ["MAX_FRAME", "Signal", "LinkOwner", "PeerLink", "MessageWebSocket", "exchange", "pump"]
Tag = TypeVar("Tag")
GATHER_PASSES = 4  # scheduler passes a flush waits at most for more packets (see _gather)


class Signal:
    """A level-triggered wake-up: `set()` from anywhere in trio, `wait()` in one task."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class MessageWebSocket(Protocol):
    """What a link needs of its WebSocket: trio-websocket's message API, as
    node/ws_messages.MessageSocket gives it on both sides (the master's served socket, the
    slave's from node/ws_open.open_link); raises trio_websocket.ConnectionClosed once closed."""

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes) -> None: ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


class LinkOwner(Protocol):
    """Who acts on a link's events (SlaveLink, MasterRelay); given when the PeerLink is built."""

    def link_event(self, peer: PeerLink[Any], event: Event) -> None: ...


@attrs.define(eq=False)
class PeerLink(Generic[Tag]):
    """One peer as the trio side holds it: its stream (outlives connections), the writer's
    wake-up, and the owner its events go to."""

    name: str
    stream: PeerStream[Tag]
    owner: LinkOwner
    wake: Signal = attrs.Factory(Signal)
    last_heard: float = 0.0
    # The peer waits on our next ack (a new session's replay waits for the master's ack of its
    # SessionOpen): the writer sends it at once, not held link_ack_delay_s for a batch.
    ack_now: bool = False

    def push(self, packet: Packet, tag: Tag | None = None) -> None:
        self.stream.push(packet, tag)
        self.wake.set()

    def __len__(self) -> int:
        return len(self.stream.window)


async def _send_replies(ws: MessageWebSocket, conn: ForwardConnection[Any]) -> None:
    for data in conn.data_to_send():
        await ws.send_message(data)


async def exchange(ws: MessageWebSocket, conn: ForwardConnection[Any]) -> list[Event]:
    """Handshake step: reads one message into `conn`, sends its replies, returns its events.
    ConnectionClosed while reading propagates (the handshake failed)."""
    conn.receive_data(await ws.get_message())
    events = list(conn.events())
    try:
        await _send_replies(ws, conn)
    except ConnectionClosed:
        pass  # the events (a refusal, typically) say what happened; the close is the peer's answer
    return events


async def pump(ws: MessageWebSocket, conn: ForwardConnection[Any], peer: PeerLink[Any],
               tunables: Tunables) -> LinkEnded:
    """Runs an open link until it ends; returns why (the connection closed, a refusal, or the
    peer went silent). Anything else is a bug and propagates."""
    peer.last_heard = trio.current_time()
    async with trio.open_nursery() as nursery:

        def stop(reason: EndReason, detail: str) -> None:
            conn.close(reason, detail)
            nursery.cancel_scope.cancel()

        nursery.start_soon(_reader, ws, conn, peer, stop)
        nursery.start_soon(_writer, ws, conn, peer, stop, tunables)
        nursery.start_soon(_watchdog, peer, stop, tunables.link_dead_after_s)
    ended = conn.close(EndReason.CLOSED, "cancelled")
    for event in conn.events():  # what is left (the LinkEnded of a stop)
        peer.owner.link_event(peer, event)
    if ended.reason is not EndReason.CLOSED:
        with trio.move_on_after(1):
            await ws.aclose(ended.close_code, ended.detail[:100])
    return ended


async def _reader(ws: MessageWebSocket, conn: ForwardConnection[Any], peer: PeerLink[Any],
                  stop: Any) -> None:
    owner = peer.owner
    try:
        while True:
            conn.receive_data(await ws.get_message())
            peer.last_heard = trio.current_time()
            for event in conn.events():
                owner.link_event(peer, event)
            if conn.ended is not None:
                await _send_replies(ws, conn)
                stop(conn.ended.reason, conn.ended.detail)
                return
            peer.wake.set()  # our ack to the peer may have moved
    except ConnectionClosed as exc:
        stop(EndReason.CLOSED, f"connection closed: {exc.reason}")


async def _writer(ws: MessageWebSocket, conn: ForwardConnection[Any], peer: PeerLink[Any],
                  stop: Any, tunables: Tunables) -> None:
    try:
        while True:
            with trio.move_on_after(tunables.link_beat_s) as idle:
                while not conn.has_unsent() and not conn.ack_moved():
                    await peer.wake.wait()
            event: Heartbeat | Flush
            if idle.cancelled_caught:
                event = Heartbeat(0)
            else:
                if not conn.has_unsent() and not peer.ack_now:
                    # Only our ack moved: hold it link_ack_delay_s so that it rides on a batch,
                    # or covers more packets (a delayed ack). Deliveries never wait for it.
                    with trio.move_on_after(tunables.link_ack_delay_s):
                        while not conn.has_unsent() and not peer.ack_now:
                            await peer.wake.wait()
                await _gather(peer)
                event = Flush(tunables.link_max_batch)
                peer.ack_now = False  # this flush carries the ack (set again by what comes after)
            if conn.ended is not None:
                # The link ended meanwhile (its reader took the end and sends its replies
                # before it calls stop(), which cancels this task): nothing more goes on it.
                continue
            await ws.send_message(conn.send(event))
    except ConnectionClosed as exc:
        stop(EndReason.CLOSED, f"connection closed: {exc.reason}")


async def _gather(peer: PeerLink[Any]) -> None:
    """Scheduler passes before a flush, until one adds no packet (at most GATHER_PASSES): the
    packets that tasks runnable meanwhile push join this batch, in one forward frame and one
    wake-up of the peer (issue 12). The link may end meanwhile: the caller checks again."""
    window = peer.stream.window
    for _ in range(GATHER_PASSES):
        pushed = window.next_seq
        await trio.lowlevel.checkpoint()
        if window.next_seq == pushed:
            return


async def _watchdog(peer: PeerLink[Any], stop: Any, dead_after_s: float) -> None:
    while trio.current_time() - peer.last_heard < dead_after_s:
        await trio.sleep_until(peer.last_heard + dead_after_s)
    stop(EndReason.CLOSED, f"nothing heard for {dead_after_s:g} s")
