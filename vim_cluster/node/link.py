"""What both ends of a forward link run once it is authenticated: the pump.

One task reads batches (hands each new packet to the owner, applies acks), one writes
(batches of queued packets with the current ack, or a bare ack after ACK_DELAY_S, or a beat
every BEAT_S).
A link that hears nothing for DEAD_AFTER_S is dropped; the owner reconnects (slave) or waits
for the slave to (master). The pump never loses a packet: what is not acked stays in the
Outbox and is resent on the next connection.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ..protocol.forward import Inbox, Outbox, OutItem
from ..protocol.forward_frames import (
    Batch,
    Beat,
    ForwardProtocolError,
    Packet,
    decode_frame,
    encode_frame,
)

BEAT_S = 2.0
ACK_DELAY_S = 0.005
DEAD_AFTER_S = 10.0
MAX_BATCH = 256
MAX_FRAME = 16 * 1024 * 1024


class Signal:
    """A level-triggered wake-up: `set()` from anywhere in trio, `wait()` in one task."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


@attrs.define(eq=False)
class LinkEnd:
    """One side's state for one peer; survives reconnects of the link."""

    outbox: Outbox
    inbox: Inbox
    on_packet: Callable[[int, Packet], None]  # (seq, packet) for each new packet
    on_acked: Callable[[list[OutItem]], None]
    ack_value: Callable[[], int]  # what to acknowledge to the peer now
    # Fencing (core/mastership.py): the epoch stamped on our frames, and the verdict on the
    # peer's (None: accept; else why the link is dropped).
    fence_out: Callable[[], int] = lambda: 0
    fence_in: Callable[[int], str | None] = lambda epoch: None
    wake: Signal = attrs.Factory(Signal)
    sent_ack: int = -1
    last_heard: float = 0.0

    def push(self, packet: Packet, tag: object = None) -> None:
        self.outbox.push(packet, tag)
        self.wake.set()


async def pump(ws: WebSocketConnection, end: LinkEnd) -> str:
    """Runs the link until it ends; returns why (the connection closed, the peer broke the
    protocol, or went silent). Anything else is a bug and propagates."""
    end.sent_ack = -1  # a new connection: tell the peer our ack once at least
    end.last_heard = trio.current_time()
    ended: list[str] = []
    async with trio.open_nursery() as nursery:

        def stop(reason: str) -> None:
            ended.append(reason)
            nursery.cancel_scope.cancel()

        nursery.start_soon(_reader, ws, end, stop)
        nursery.start_soon(_writer, ws, end, stop)
        nursery.start_soon(_watchdog, end, stop)
    return ended[0] if ended else "cancelled"


async def _reader(ws: WebSocketConnection, end: LinkEnd, stop: Callable[[str], None]) -> None:
    try:
        while True:
            frame = decode_frame(await ws.get_message())
            end.last_heard = trio.current_time()
            if not isinstance(frame, Batch | Beat):
                raise ForwardProtocolError(f"unexpected {type(frame).__name__} on an open link")
            fenced = end.fence_in(frame.fence)
            if fenced:
                stop(f"fenced: {fenced}")
                return
            if isinstance(frame, Beat):
                continue
            for seq, packet in frame.items:
                if end.inbox.accept(seq):
                    end.on_packet(seq, packet)
            if frame.ack is not None:
                acked = end.outbox.ack(int(frame.ack))
                if acked:
                    end.on_acked(acked)
            end.wake.set()  # our ack to the peer may have moved
    except ConnectionClosed as exc:
        stop(f"connection closed: {exc.reason}")
    except ForwardProtocolError as exc:
        stop(f"protocol error: {exc}")


async def _writer(ws: WebSocketConnection, end: LinkEnd, stop: Callable[[str], None]) -> None:
    try:
        while True:
            with trio.move_on_after(BEAT_S) as idle:
                while not end.outbox.has_unsent() and end.ack_value() == end.sent_ack:
                    await end.wake.wait()
            if idle.cancelled_caught:
                await ws.send_message(encode_frame(Beat(0, end.fence_out())))
                continue
            if not end.outbox.has_unsent():
                # Only our ack moved: hold it ACK_DELAY_S so that it rides on a batch, or
                # covers more packets (a delayed ack). Deliveries never wait for it.
                with trio.move_on_after(ACK_DELAY_S):
                    while not end.outbox.has_unsent():
                        await end.wake.wait()
            ack = end.ack_value()
            items = end.outbox.take_batch(MAX_BATCH)
            await ws.send_message(encode_frame(Batch(items, ack, end.fence_out())))
            end.sent_ack = ack
    except ConnectionClosed as exc:
        stop(f"connection closed: {exc.reason}")


async def _watchdog(end: LinkEnd, stop: Callable[[str], None]) -> None:
    while trio.current_time() - end.last_heard < DEAD_AFTER_S:
        await trio.sleep_until(end.last_heard + DEAD_AFTER_S)
    stop(f"nothing heard for {DEAD_AFTER_S:g} s")
