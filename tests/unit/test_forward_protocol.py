"""The forward channel's reliable exchange without sockets: UnackedWindow, SeqReceiver and
UpstreamAcks of two (or three) ends passing real frames (encode_frame/decode_frame) back to back
in memory (ForwardConnection, which joins them, is tested in test_forward_connection.py); and the
frame codec on its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import pytest

from vim_cluster.protocol.forward import SeqReceiver, Unacked, UnackedWindow, UpstreamAcks
from vim_cluster.protocol.forward_frames import (
    MAX_FRAMES_PER_DELIVER,
    Auth,
    Batch,
    Beat,
    CatchUp,
    Challenge,
    Deliver,
    ForwardProtocolError,
    Hello,
    Kick,
    Leaving,
    Packet,
    PeerRole,
    Presence,
    Refused,
    SessionClose,
    SessionOpen,
    Sessions,
    Welcome,
    decode_frame,
    encode_frame,
    mac_ok,
    master_mac,
    slave_mac,
)

from .test_delivery import wire_ids


def deliver(n: int) -> Deliver:
    return Deliver("dept-1", [7, 8], b'{"code":"message","message":{"id":"%d"}}' % n, "s-1", 1000 + n, n)


class End:
    """One side of a link: its UnackedWindow to the peer, its SeqReceiver from the peer's instance."""

    def __init__(self, instance: str, peer_instance: str) -> None:
        self.instance = instance
        self.window: UnackedWindow[str] = UnackedWindow()
        self.receiver = SeqReceiver(peer_instance)
        self.got: list[Packet] = []
        self.completed: list[Unacked[str]] = []

    def push(self, n: int, tag: str | None = None) -> None:
        self.window.push(deliver(n), tag)

    def batch(self, limit: int = 256, ack: int | None = -1) -> bytes:
        """The next batch frame on the wire (ack: ours by default)."""
        first, packets = self.window.take_batch(limit)
        return encode_frame(Batch(self.receiver.received if ack == -1 else ack, first, packets), 0)

    def receive(self, data: bytes) -> None:
        _, frame = decode_frame(data)
        assert isinstance(frame, Batch)
        for seq, packet in enumerate(frame.packets, start=frame.first):
            if self.receiver.accept(seq):
                self.got.append(packet)
        if frame.ack is not None:
            self.completed += self.window.ack(frame.ack)


def ids(packets: Sequence[Packet]) -> list[int]:
    return [p.message_id or 0 for p in packets if isinstance(p, Deliver)]


def test_batches_deliver_every_packet_once_in_order() -> None:
    a, b = End("ea", "eb"), End("eb", "ea")
    for n in range(1, 11):
        a.push(n)
    while a.window.has_unsent():
        b.receive(a.batch(limit=3))
    assert ids(b.got) == list(range(1, 11))
    assert b.receiver.received == 10
    assert not a.window.has_unsent() and len(a.window) == 10  # kept until acked


def join(earlier: Packet, new: Packet) -> Packet | None:
    """Two Delivers as one when `new` is for the same users: their frames joined in order."""
    if not (isinstance(earlier, Deliver) and isinstance(new, Deliver)) or earlier.users != new.users:
        return None
    return earlier._replace(frame=[*earlier.frames, *new.frames], message_id=None)


def only_delivers(packet: Packet) -> bool:
    return isinstance(packet, Deliver)


def never(packet: Packet) -> bool:
    return False


def to(users: list[int], n: int) -> Deliver:
    return deliver(n)._replace(users=users)


def test_a_packet_joins_the_newest_unsent_packet_it_merges_with_and_keeps_its_number() -> None:
    window: UnackedWindow[str] = UnackedWindow()
    window.push(to([7], 1))
    window.push(to([8], 2))
    assert window.merge_unsent(to([8], 3), join, only_delivers, lookback=16)  # the newest
    assert window.merge_unsent(to([7], 4), join, only_delivers, lookback=16)  # past [8]'s
    assert not window.merge_unsent(to([9], 5), join, only_delivers, lookback=16)  # nobody's
    assert [(i.seq, wire_ids(i.packet)) for i in window.items] == [(1, [1, 4]), (2, [2, 3])]
    assert window.next_seq == 3 and window.unsent() == 2
    assert not window.merge_unsent(to([7], 6), join, never, lookback=16)  # may not pass [8]'s
    assert window.merge_unsent(to([8], 6), join, never, lookback=16)  # joins the newest
    assert [wire_ids(i.packet) for i in window.items] == [[1, 4], [2, 3, 6]]


def test_a_packet_never_joins_one_already_sent_one_tagged_or_one_past_a_barrier() -> None:
    a, b = End("ea", "eb"), End("eb", "ea")
    a.window.push(to([7], 1))
    b.receive(a.batch())  # sent: it may not change any more
    assert not a.window.merge_unsent(to([7], 2), join, only_delivers, lookback=16)
    a.window.push(to([7], 2), "t2")  # tagged (a relayed packet, acked upstream by its tag)
    assert not a.window.merge_unsent(to([7], 3), join, only_delivers, lookback=16)
    a.window.push(to([7], 3))
    a.window.push(SessionOpen(7, "s-9", "web", None))  # a route update between them
    assert not a.window.merge_unsent(to([7], 4), join, only_delivers, lookback=16)
    a.window.push(to([7], 4))
    b.receive(a.batch())
    assert [wire_ids(p) for p in b.got if isinstance(p, Deliver)] == [[1], [2], [3], [4]]
    assert [type(p) for p in b.got] == [Deliver, Deliver, Deliver, SessionOpen, Deliver]


def test_a_packet_looks_back_at_most_lookback_packets() -> None:
    window: UnackedWindow[str] = UnackedWindow()
    window.push(to([7], 1))
    for n in range(2, 5):
        window.push(to([n * 10], n))
    assert not window.merge_unsent(to([7], 5), join, only_delivers, lookback=3)
    assert window.merge_unsent(to([7], 5), join, only_delivers, lookback=4)
    assert wire_ids(window.items[0].packet) == [1, 5]


def test_packets_of_a_batch_too_big_to_send_whole_count_as_unsent_again() -> None:
    a = End("ea", "eb")
    for n in range(1, 9):
        a.push(n)
    first, packets = a.window.take_batch(256)
    assert (first, len(packets)) == (1, 8)
    a.window.unsend(5)  # only 1..3 go
    assert a.window.unsent() == 5 and a.window.has_unsent()
    assert a.window.take_batch(256)[0] == 4
    with pytest.raises(ValueError):
        a.window.unsend(9)  # more than are in flight


def test_acks_are_cumulative_and_hand_back_the_tags() -> None:
    a, b = End("ea", "eb"), End("eb", "ea")
    for n in range(1, 6):
        a.push(n, tag=f"t{n}")
    b.receive(a.batch())
    a.receive(encode_frame(Batch(3, 1, []), 0))  # b acknowledges up to 3 at once
    assert [i.tag for i in a.completed] == ["t1", "t2", "t3"]
    assert [i.seq for i in a.window.items] == [4, 5] and a.window.acked_upto == 3
    a.receive(encode_frame(Batch(2, 1, []), 0))  # an older ack changes nothing
    assert len(a.completed) == 3 and a.window.acked_upto == 3
    a.receive(b.batch())  # b's current ack: everything
    assert [i.tag for i in a.completed] == ["t1", "t2", "t3", "t4", "t5"] and len(a.window) == 0


def test_an_ack_for_a_packet_never_sent_is_a_protocol_error() -> None:
    a = End("ea", "eb")
    a.push(1)
    with pytest.raises(ForwardProtocolError):
        a.receive(encode_frame(Batch(2, 1, []), 0))


def test_after_a_reconnect_the_outbox_resends_what_the_peer_did_not_receive() -> None:
    a, b = End("ea", "eb"), End("eb", "ea")
    for n in range(1, 6):
        a.push(n)
    b.receive(a.batch(limit=3))  # 1..3 arrive
    a.batch()  # 4..5 are sent, but the link drops: they never arrive
    a.push(6)  # queued while the link is down
    # reconnect: b says what it received (the handshake's `received`), a rewinds to it
    _, welcome = decode_frame(encode_frame(Welcome(b.receiver.received), 0))
    assert isinstance(welcome, Welcome)
    a.window.rewind(welcome.received)
    b.receive(a.batch())
    assert ids(b.got) == [1, 2, 3, 4, 5, 6]


def test_rewind_keeps_what_the_peer_received_but_did_not_acknowledge() -> None:
    a, b = End("ea", "eb"), End("eb", "ea")
    for n in range(1, 6):
        a.push(n, tag=f"t{n}")
    b.receive(a.batch())
    a.receive(encode_frame(Batch(2, 1, []), 0))  # acked: 1, 2
    a.window.rewind(5)  # b received everything: nothing to resend ...
    assert not a.window.has_unsent()
    assert [i.seq for i in a.window.items] == [3, 4, 5]  # ... but 3..5 stay until acked
    a.receive(encode_frame(Batch(5, 1, []), 0))
    assert [i.tag for i in a.completed] == ["t1", "t2", "t3", "t4", "t5"]


def test_rewind_never_resends_acknowledged_packets_and_rejects_impossible_claims() -> None:
    a = End("ea", "eb")
    for n in range(1, 6):
        a.push(n)
    a.window.take_batch(10)
    a.window.ack(3)
    a.window.rewind(0)  # the peer lost track: resend starts after what it acknowledged
    first, packets = a.window.take_batch(10)
    assert first == 4 and ids(packets) == [4, 5]
    with pytest.raises(ForwardProtocolError):
        a.window.rewind(6)  # more than was ever sent


def test_duplicates_are_dropped_by_sequence_number() -> None:
    a, b = End("ea", "eb"), End("eb", "ea")
    for n in range(1, 5):
        a.push(n)
    b.receive(a.batch(limit=2))
    a.window.rewind(0)  # the peer's `received` got lost: a resends from the start
    b.receive(a.batch())
    assert ids(b.got) == [1, 2, 3, 4]
    assert b.receiver.accept(4) is False and b.receiver.accept(1) is False


def test_a_sequence_gap_is_a_protocol_error() -> None:
    inbox = SeqReceiver("e")
    assert inbox.accept(1) is True
    with pytest.raises(ForwardProtocolError, match="gap"):
        inbox.accept(3)
    b = End("eb", "ea")
    with pytest.raises(ForwardProtocolError):
        b.receive(encode_frame(Batch(None, 2, [deliver(2)]), 0))  # the first packet must be 1


def test_a_restarted_peer_has_a_new_epoch_and_both_directions_start_at_one() -> None:
    """A slave restarted: the master drops the old epoch's queue, and exchanges with the new
    process through a new SeqReceiver and a new UnackedWindow (as MasterRelay does for a new instance)."""
    master, slave = End("em", "es1"), End("es1", "em")
    for n in range(1, 4):
        slave.push(n)
    master.receive(slave.batch())
    for n in range(1, 3):
        master.push(n, tag=f"t{n}")
    master.batch()  # sent to the old process, never acked

    restarted = End("es2", "em")  # a new process: a new epoch, its seqs from 1 again
    assert restarted.instance != master.receiver.instance
    dropped = master.window.drain()  # what the dead process never acked: its tags complete
    assert [i.tag for i in dropped] == ["t1", "t2"] and len(master.window) == 0
    assert not master.window.has_unsent()
    master.receiver, master.window = SeqReceiver(restarted.instance), UnackedWindow()
    restarted.push(1)
    master.receive(restarted.batch())
    master.push(9)
    restarted.receive(master.batch())
    assert ids(master.got) == [1, 2, 3, 1]
    assert ids(restarted.got) == [9] and restarted.receiver.received == 1
    with pytest.raises(ForwardProtocolError, match="gap"):  # the old epoch's numbering is gone
        SeqReceiver(restarted.instance).accept(4)


def test_a_restarted_master_resumes_a_surviving_slaves_sequence_from_its_base() -> None:
    """The master restarted (new epoch), the slave did not: the slave's UnackedWindow goes on from its
    acknowledged base, which it sends in its Auth; the new master's SeqReceiver starts there."""
    master, slave = End("em1", "es"), End("es", "em1")
    for n in range(1, 6):
        slave.push(n)
    master.receive(slave.batch())
    slave.receive(master.batch())  # acked 1..5 by the old master
    assert slave.window.acked_upto == 5
    for n in range(6, 9):
        slave.push(n)  # queued while the master is down

    new_master = End("em2", "es")
    _, auth = decode_frame(encode_frame(Auth("mac", 0, slave.window.acked_upto), 0))
    assert isinstance(auth, Auth) and auth.base == 5
    slave.receiver = SeqReceiver(new_master.instance)  # the slave sees the new master epoch: starts over
    new_master.receiver = SeqReceiver(slave.instance, received=auth.base)
    slave.window.rewind(new_master.receiver.received)  # the Welcome
    new_master.receive(slave.batch())
    assert ids(new_master.got) == [6, 7, 8]
    # without the base, a fresh SeqReceiver could not take the resend
    with pytest.raises(ForwardProtocolError, match="gap"):
        SeqReceiver(slave.instance).accept(6)


def test_the_session_list_travels_in_its_own_frame_after_auth() -> None:
    """auth stays small (the master caps frames at 4 KiB until its MAC checked out); the
    slave's sessions, however many, follow in a `sessions` frame."""
    sessions = [[n, f"s-{n}", "web", None] for n in range(1000)]
    assert len(encode_frame(Auth("m" * 64, 3, 7), 0)) < 200
    assert decode_frame(encode_frame(Sessions(sessions), 0)) == (0, Sessions(sessions))


def test_master_acks_a_slave_only_when_every_forward_was_acked_end_to_end() -> None:
    """slave A -> master -> slave B: A's packet is acked when B acked the master's forward."""
    a = End("ea", "em")
    master_from_a = SeqReceiver("ea")
    upstream = UpstreamAcks()
    to_b: UnackedWindow[tuple[str, int]] = UnackedWindow()

    a.push(1)  # for B
    a.push(2)  # for nobody else (local users only)
    a.push(3)  # for B too
    _, frame = decode_frame(a.batch())
    assert isinstance(frame, Batch)
    for seq, packet in enumerate(frame.packets, start=frame.first):
        assert master_from_a.accept(seq)
        forwards = 0 if seq == 2 else 1
        if forwards:
            to_b.push(packet, ("ea", seq))
        upstream.received_packet(seq, forwards)
    assert upstream.ack_value() == 0  # 1 is not done: nothing can be acked
    to_b.take_batch(10)
    done = to_b.ack(1)  # B acked the forward of A's 1
    for item in done:
        assert item.tag is not None
        upstream.forward_done(item.tag[1])
    assert upstream.ack_value() == 2  # 1 done, 2 needed no forward, 3 still out
    a.receive(encode_frame(Batch(upstream.ack_value(), 1, []), 0))
    assert [i.seq for i in a.window.items] == [3]
    for item in to_b.drain():  # B died: its queue is dropped, which completes the forwards
        assert item.tag is not None
        upstream.forward_done(item.tag[1])
    assert upstream.ack_value() == 3


def test_upstream_acks_count_each_forward() -> None:
    upstream = UpstreamAcks()
    upstream.received_packet(1, 2)  # forwarded to two nodes
    upstream.received_packet(2, 1)
    upstream.forward_done(1)
    assert upstream.ack_value() == 0
    upstream.forward_done(2)
    assert upstream.ack_value() == 0  # 2 is done, but 1 still waits for one node
    upstream.forward_done(1)
    assert upstream.ack_value() == 2
    upstream.forward_done(99)  # unknown (a duplicate completion): ignored
    assert upstream.ack_value() == 2


PACKETS: list[Packet] = [
    deliver(1),
    Kick("dept-2", 7, "s-9", 4001, b'{"code":"other-login","message":{"uuid":null,"nodeId":"m"}}'),
    Kick("dept-2", 7, None, 4002, None),
    Deliver("dept-2", [7], [b'{"code":"receipt","message":{"id":1}}', b'{"code":"receipt","message":{"id":2}}'],
            None, 1000, None),  # several frames for the same users, in order
    SessionOpen(7, "s-1", "web", "u-1"),
    SessionClose(7, "s-1"),
    Presence([[7, True, "dept-1"], [8, False, None]]),
    CatchUp(1796285817208, "dept-2"),
    Leaving("dept-2"),
]
FRAMES: list[Any] = [
    Hello("dept-1", PeerRole.SLAVE, "e1", "n1"),
    Challenge("master", "e2", "n2", "mac"),
    Auth("mac", 4, 2),
    Sessions([[7, "s-1", "web", None]]),
    Welcome(9),
    Refused("no"),
    Batch(3, 1, PACKETS),
    Batch(None, 1, []),
    Beat(123),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_every_frame_survives_the_wire(frame: Any) -> None:
    assert decode_frame(encode_frame(frame, 7)) == (7, frame)


@pytest.mark.parametrize("data", [
    "text",
    b"\xc1",  # not MessagePack
    msgpack.packb([1, 2]),
    msgpack.packb({"t": "welcome", "received": 0}),  # the old map format
    msgpack.packb([99, 0, 1]),  # an unknown tag
    msgpack.packb([4, 0]),  # a field missing
    msgpack.packb([4, "0", 1]),  # an epoch that is not an int
    msgpack.packb([6, 0, None, 1, [[0]]]),  # a deliver packet without its fields
    msgpack.packb([6, 0, None, 1, [[1, 2, 9]]]),  # an unknown packet kind
    msgpack.packb([6, 0, 0, "x", [[1, "s", 3]]]),  # a sequence number that is not an int
    msgpack.packb([6, 0, 0, 1, [[[[1, "on", None]], 4]]]),  # presence: online is not a bool
    msgpack.packb([6, 0, 0, 1, [["1", "dept-2", 5]]]),  # catch-up: since is not an int
    msgpack.packb([6, 0, 0, 1, [[1, None, 5]]]),  # catch-up: no node
    msgpack.packb([6, 0, 0, 1, [[None, 6]]]),  # leaving: no node
    msgpack.packb([6, 0, 0, 1, [["dept-2", 1, 6]]]),  # leaving: a field too many
    # a Deliver's list of frames: with a message id, of one frame, empty, too long, not all bytes
    msgpack.packb([6, 0, 0, 1, [["d", [7], [b"{}", b"{}"], None, 1, 5, 0]]]),
    msgpack.packb([6, 0, 0, 1, [["d", [7], [b"{}"], None, 1, None, 0]]]),
    msgpack.packb([6, 0, 0, 1, [["d", [7], [], None, 1, None, 0]]]),
    msgpack.packb([6, 0, 0, 1, [["d", [7], [b"{}"] * (MAX_FRAMES_PER_DELIVER + 1), None, 1, None, 0]]]),
    msgpack.packb([6, 0, 0, 1, [["d", [7], [b"{}", "{}"], None, 1, None, 0]]]),
])
def test_anything_else_is_a_protocol_error(data: Any) -> None:
    with pytest.raises(ForwardProtocolError):
        decode_frame(data)


def test_macs_prove_the_secret_both_ways() -> None:
    secret, other = b"s" * 32, b"o" * 32
    assert mac_ok(master_mac(secret, "a", "b"), master_mac(secret, "a", "b"))
    assert not mac_ok(master_mac(secret, "a", "b"), master_mac(other, "a", "b"))
    assert not mac_ok(slave_mac(secret, "dept-1", "a", "b"), slave_mac(secret, "dept-2", "a", "b"))
    assert not mac_ok(master_mac(secret, "a", "b"), slave_mac(secret, "x", "a", "b"))
    assert not mac_ok(master_mac(secret, "a", "b"), None)
