"""Reliable, ordered, batched packet exchange over a link that may drop and come back.

Rules:
- Every packet gets the next sequence number of its sender's UnackedWindow; the window keeps it
  until the peer acknowledges it (cumulative acks), across any number of reconnects.
- On (re)connect the peer says the highest sequence it received from this instance (`received`);
  the window resends everything after it, in order. What the peer received but did not
  acknowledge yet stays kept (it may be acked later: the master acks end to end).
- The SeqReceiver drops duplicates (seq <= received); a gap means the peer broke the protocol.
- Instances: each process start is a new instance. A SeqReceiver belongs to one peer instance;
  a peer with a new instance starts at 0 (it restarted, and its old packets died with it).
- A PeerStream is one peer's state that outlives its connections: the window to it, the
  receiver from it, and which received packets are held (not acknowledged yet).
- Sans-I/O: no sockets and no clocks here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Generic, NamedTuple, TypeVar

import attrs

from .forward_frames import ForwardProtocolError, Packet

Tag = TypeVar("Tag")


class OutOfOrder(ForwardProtocolError):
    """A sequence gap, an ack for a packet never sent, or a resend claim beyond what was sent."""


class Unacked(NamedTuple, Generic[Tag]):
    seq: int
    packet: Packet
    tag: Tag | None  # what the sender wants back when it is acked (upstream seq)


@attrs.define
class UnackedWindow(Generic[Tag]):
    """Packets to one peer, numbered, kept until acked."""

    next_seq: int = 1
    sent_upto: int = 0
    acked_upto: int = 0
    items: deque[Unacked[Tag]] = attrs.Factory(deque)

    def push(self, packet: Packet, tag: Tag | None = None) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.items.append(Unacked(seq, packet, tag))
        return seq

    def merge_unsent(self, packet: Packet, merge: Callable[[Packet, Packet], Packet | None],
                     can_pass: Callable[[Packet], bool], lookback: int) -> bool:
        """Folds `packet` into one of the newest `lookback` packets not yet sent and untagged,
        newest first: the first for which `merge(it, packet)` gives the two as one. It goes back
        past a packet only if `can_pass(that packet)` (the caller's order rule); a sent or
        tagged packet ends the search. False (nothing changed) if it found none."""
        items = self.items
        for back in range(1, min(lookback, len(items)) + 1):
            item = items[-back]
            if item.seq <= self.sent_upto or item.tag is not None:
                return False
            merged = merge(item.packet, packet)
            if merged is not None:
                items[-back] = Unacked(item.seq, merged, None)
                return True
            if not can_pass(item.packet):
                return False
        return False

    def has_unsent(self) -> bool:
        return self.next_seq - 1 > self.sent_upto and bool(self.items)

    def take_batch(self, limit: int) -> tuple[int, list[Packet]]:
        """(first seq, the next unsent packets, at most `limit`); they count as sent (until a
        rewind). Kept items are consecutive, so the first unsent one is found by arithmetic."""
        if not self.items:
            return self.sent_upto + 1, []
        start = max(0, self.sent_upto + 1 - self.items[0].seq)
        packets = [item.packet for item in islice(self.items, start, start + limit)]
        first = self.items[0].seq + start
        self.sent_upto = first + len(packets) - 1 if packets else self.sent_upto
        return first, packets

    def unsend(self, count: int) -> None:
        """The newest `count` packets of the batch just taken count as not sent after all (the
        batch was too big to send whole): the next take starts with them."""
        if not 0 <= count <= self.sent_upto - self.acked_upto:
            raise ValueError(f"cannot unsend {count} packets ({self.sent_upto - self.acked_upto} in flight)")
        self.sent_upto -= count

    def ack(self, upto: int) -> list[Unacked[Tag]]:
        """Drops every packet <= upto; returns them (the caller completes their tags)."""
        if upto >= self.next_seq:
            raise OutOfOrder(f"ack {upto} for a packet never sent (next {self.next_seq})")
        done: list[Unacked[Tag]] = []
        while self.items and self.items[0].seq <= upto:
            done.append(self.items.popleft())
        self.acked_upto = max(self.acked_upto, upto)
        self.sent_upto = max(self.sent_upto, self.acked_upto)
        return done

    def rewind(self, peer_received: int) -> None:
        """After a reconnect: resend everything after what the peer says it received."""
        if peer_received >= self.next_seq:
            raise OutOfOrder(f"peer claims {peer_received}, only {self.next_seq - 1} sent")
        self.sent_upto = max(peer_received, self.acked_upto)

    def empty_out(self, stand_in: Callable[[Packet], Packet | None]) -> list[Packet]:
        """Replaces each packet kept for which `stand_in(packet)` gives another by that one,
        under the same sequence number (a peer that got the original keeps it, one that did
        not gets the stand-in: numbering and resends stay as they were); returns the packets
        replaced, oldest first."""
        replaced: list[Packet] = []
        kept: deque[Unacked[Tag]] = deque()
        for item in self.items:
            other = stand_in(item.packet)
            if other is not None:
                replaced.append(item.packet)
                item = Unacked(item.seq, other, item.tag)
            kept.append(item)
        self.items = kept
        return replaced

    def unsent(self) -> int:
        return self.next_seq - 1 - self.sent_upto

    def drain(self) -> list[Unacked[Tag]]:
        """Drops everything (the peer restarted or died); returns what was dropped."""
        dropped = list(self.items)
        self.items.clear()
        self.sent_upto = self.acked_upto = self.next_seq - 1
        return dropped

    def __len__(self) -> int:
        return len(self.items)


@attrs.define
class SeqReceiver:
    """Packets from one peer instance: each accepted once, in order."""

    instance: str
    received: int = 0

    def accept(self, seq: int) -> bool:
        """True for the next packet, False for a duplicate; a gap is a protocol error."""
        if seq <= self.received:
            return False
        if seq != self.received + 1:
            raise OutOfOrder(f"sequence gap: got {seq} after {self.received}")
        self.received = seq
        return True


@attrs.define
class UpstreamAcks:
    """Which received packets are complete. A packet is complete once received, unless the
    owner holds it: the master holds a slave's packet until every forward it made of it was
    acked by its destination (or dropped because the destination died). The peer is acked up
    to the highest seq below which everything is complete.
    """

    received: int = 0
    outstanding: dict[int, int] = attrs.Factory(dict)  # seq -> forwards not yet acked

    def received_packet(self, seq: int, forwards: int) -> None:
        self.received = max(self.received, seq)
        if forwards:
            self.outstanding[seq] = forwards

    def hold(self, seq: int, forwards: int) -> None:
        """`seq` (received already) is complete after `forwards` calls of forward_done."""
        if forwards > 0:
            self.outstanding[seq] = forwards

    def forward_done(self, seq: int) -> None:
        left = self.outstanding.get(seq)
        if left is None:
            return
        if left <= 1:
            del self.outstanding[seq]
        else:
            self.outstanding[seq] = left - 1

    def ack_value(self) -> int:
        if not self.outstanding:
            return self.received
        return min(self.outstanding) - 1


@attrs.define(eq=False)
class PeerStream(Generic[Tag]):
    """One peer's reliable exchange; outlives the peer's connections (ForwardConnection uses it
    while a link is open)."""

    window: UnackedWindow[Tag] = attrs.Factory(UnackedWindow)
    receiver: SeqReceiver = attrs.Factory(lambda: SeqReceiver(""))
    acks: UpstreamAcks = attrs.Factory(UpstreamAcks)

    @classmethod
    def from_base(cls, instance: str, base: int, peer_received: int = 0) -> PeerStream[Tag]:
        """A stream for a peer instance we have no state of, whose resend starts after `base`.
        `peer_received`: what the peer got from an earlier stream of ours that we dropped (the
        peer was declared dead, then came back): our numbering goes on after it."""
        window: UnackedWindow[Tag] = UnackedWindow(next_seq=peer_received + 1, sent_upto=peer_received,
                                                   acked_upto=peer_received)
        return cls(window, SeqReceiver(instance, base), UpstreamAcks(received=base))

    def push(self, packet: Packet, tag: Tag | None = None) -> int:
        return self.window.push(packet, tag)

    def new_peer_instance(self, instance: str) -> None:
        """The peer restarted: its numbering starts over (ours to it goes on)."""
        self.receiver = SeqReceiver(instance)
        self.acks = UpstreamAcks()

    def hold(self, seq: int, forwards: int) -> None:
        self.acks.hold(seq, forwards)

    def forward_done(self, seq: int) -> None:
        self.acks.forward_done(seq)

    def ack_value(self) -> int:
        return self.acks.ack_value()
