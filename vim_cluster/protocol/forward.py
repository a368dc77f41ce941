"""Reliable, ordered, batched packet exchange over a link that may drop and come back.

Rules:
- Every packet gets the next sequence number of its sender's Outbox; the Outbox keeps it until
  the peer acknowledges it (cumulative acks), across any number of reconnects.
- On (re)connect the peer says the highest sequence it received from this epoch (`received`);
  the Outbox resends everything after it, in order. What the peer received but did not
  acknowledge yet stays kept (it may be acked later: the master acks end to end).
- The Inbox drops duplicates (seq <= received); a gap means the peer broke the protocol.
- Epochs: each process start has a new epoch. An Inbox belongs to one peer epoch; a peer with a
  new epoch starts at 0 (it restarted, and its old packets died with it).
- Sans-I/O: no sockets and no clocks here.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import attrs

from .forward_frames import ForwardProtocolError, Packet

Tag = TypeVar("Tag")


@attrs.define
class OutItem(Generic[Tag]):
    seq: int
    packet: Packet
    tag: Tag | None = None  # what the sender wants back when it is acked (upstream seq)


@attrs.define
class Outbox(Generic[Tag]):
    next_seq: int = 1
    sent_upto: int = 0
    acked_upto: int = 0
    items: deque[OutItem[Tag]] = attrs.Factory(deque)

    def push(self, packet: Packet, tag: Tag | None = None) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.items.append(OutItem(seq, packet, tag))
        return seq

    def has_unsent(self) -> bool:
        return bool(self.items) and self.items[-1].seq > self.sent_upto

    def take_batch(self, limit: int) -> list[tuple[int, Packet]]:
        """The next unsent packets, at most `limit`; they count as sent (until a rewind)."""
        batch: list[tuple[int, Packet]] = []
        for item in self.items:  # items are in seq order; skip the sent ones
            if item.seq <= self.sent_upto:
                continue
            batch.append((item.seq, item.packet))
            if len(batch) >= limit:
                break
        if batch:
            self.sent_upto = batch[-1][0]
        return batch

    def ack(self, upto: int) -> list[OutItem[Tag]]:
        """Drops every packet <= upto; returns them (the caller completes their tags)."""
        if upto >= self.next_seq:
            raise ForwardProtocolError(f"ack {upto} for a packet never sent (next {self.next_seq})")
        done: list[OutItem[Tag]] = []
        while self.items and self.items[0].seq <= upto:
            done.append(self.items.popleft())
        self.acked_upto = max(self.acked_upto, upto)
        return done

    def rewind(self, peer_received: int) -> None:
        """After a reconnect: resend everything after what the peer says it received."""
        if peer_received >= self.next_seq:
            raise ForwardProtocolError(f"peer claims {peer_received}, only {self.next_seq - 1} sent")
        self.sent_upto = max(peer_received, self.acked_upto)

    def drain(self) -> list[OutItem[Tag]]:
        """Drops everything (the peer restarted or died); returns what was dropped."""
        dropped = list(self.items)
        self.items.clear()
        self.sent_upto = self.acked_upto = self.next_seq - 1
        return dropped

    def __len__(self) -> int:
        return len(self.items)


@attrs.define
class Inbox:
    epoch: str
    received: int = 0

    def accept(self, seq: int) -> bool:
        """True for the next packet, False for a duplicate; a gap is a protocol error."""
        if seq <= self.received:
            return False
        if seq != self.received + 1:
            raise ForwardProtocolError(f"sequence gap: got {seq} after {self.received}")
        self.received = seq
        return True


@attrs.define
class UpstreamAcks:
    """Master side, per slave: which received packets are complete (delivered end to end).

    A packet from a slave is complete when every forward the master made of it was acked by
    its destination (or dropped because the destination died). The slave is acked up to the
    highest seq below which everything is complete.
    """

    received: int = 0
    outstanding: dict[int, int] = attrs.Factory(dict)  # seq -> forwards not yet acked

    def received_packet(self, seq: int, forwards: int) -> None:
        self.received = max(self.received, seq)
        if forwards:
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
