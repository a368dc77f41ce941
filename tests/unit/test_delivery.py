"""Several frames for the same users cross the cluster as one Deliver packet with a list of
frames (node/delivery.py, protocol/forward_frames.py): a sender's receipts of one `received`,
and a slave's Delivers to the same users that join while they wait to be sent (a group commit's
messages of one chat). Driven without sockets: sessions record what they are pushed, the
cluster link what it is given."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
import structlog.testing

from vim_cluster.errors import CloseCode
from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId
from vim_cluster.node.delivery import (
    MERGE_BYTES,
    UNKNOWN_ID,
    Delivery,
    ForwardedReply,
    LocalDelivery,
    Unlinked,
    merged_deliver,
)
from vim_cluster.node.forward_link import SlaveLink
from vim_cluster.node.local_sessions import LocalSessions
from vim_cluster.node.metrics import NodeMetrics
from vim_cluster.node.offline_replay import release
from vim_cluster.protocol import forward_frames as ff
from vim_cluster.protocol.codec import OutFrame
from vim_cluster.protocol.forward_connection import MAX_FRAME
from vim_cluster.protocol.frames import MessageOut, Receipt
from vim_cluster.tunables import DEFAULTS


@attrs.define
class RecordingQueue:
    got: list[OutFrame] = attrs.Factory(list)

    def push(self, frame: OutFrame) -> bool:
        self.got.append(frame)
        return True



@attrs.define
class RecordingSession:
    """What LocalSessions.deliver needs of a session: its ids, `holding` (None: no offline
    replay running) with its `hold`, its `backlog` (never any: its queue takes everything) and
    its send queue's `push`."""

    id: str
    user_id: int
    send_queue: RecordingQueue = attrs.Factory(RecordingQueue)
    holding: list[OutFrame] | None = None
    held_bytes: int = 0
    wants_presence: bool = False
    backlog: None = None

    async def room(self, frames: int, size: int) -> None:
        """It takes everything: a held packet's release never waits for it."""

    def hold(self, frame: OutFrame) -> None:
        assert self.holding is not None
        self.holding.append(frame)

    @property
    def got(self) -> list[OutFrame]:
        return self.send_queue.got

    def push(self, frame: OutFrame) -> None:
        self.send_queue.push(frame)


def texts(frames: Sequence[OutFrame]) -> list[dict[str, Any]]:
    return [json.loads(frame.encoded(False)) for frame in frames]


def receipts(count: int) -> list[Receipt]:
    return [Receipt(i, 7, by=8) for i in range(1, count + 1)]


def local_of(name: str, *sessions: RecordingSession) -> LocalDelivery:
    """Node `name`'s LocalDelivery to these recording sessions."""
    local_sessions = LocalSessions()
    for session in sessions:
        local_sessions.add(session)  # type: ignore[arg-type]
    return LocalDelivery(name, local_sessions, NodeMetrics(name))


def node(*sessions: RecordingSession) -> tuple[Delivery, Unlinked, NodeMetrics]:
    local = local_of("dept-2", *sessions)
    cluster = Unlinked("dept-2", clock_ms=lambda: 1_000)
    return Delivery(local, cluster), cluster, local.metrics


def test_frames_in_order_leave_in_one_packet_per_hundred_and_reach_local_sessions_each() -> None:
    here = RecordingSession("s-1", 9)
    delivery, cluster, metrics = node(here)
    sent = receipts(250)
    delivery.to_users_in_order([7, 9], sent)
    # this node's session of user 9: every frame, in order
    assert [int(body["message"]["id"]) for body in texts(here.got)] == list(range(1, 251))
    assert metrics.frames_out.value == 250
    # other nodes: three Deliver packets of 100, 100 and 50 frames, in order, without message ids
    packets = cluster.packets
    assert [type(p) for p in packets] == [ff.Deliver] * 3
    assert all(isinstance(p, ff.Deliver) and isinstance(p.frame, list) and p.message_id is None
               and p.users == [7, 9] for p in packets)
    frames = [json.loads(text) for p in packets if isinstance(p, ff.Deliver) for text in p.frames]
    assert [len(p.frame) for p in packets if isinstance(p, ff.Deliver)] == [100, 100, 50]
    assert [int(body["message"]["id"]) for body in frames] == list(range(1, 251))
    assert frames == texts([OutFrame(r) for r in sent])


def test_one_frame_leaves_as_before_and_a_remainder_of_one_is_not_a_list() -> None:
    delivery, cluster, _ = node()
    delivery.to_users([7], Receipt(1, 7, by=8))
    delivery.to_users_in_order([7], receipts(101))
    one, hundred, last = cluster.packets
    assert isinstance(one, ff.Deliver) and isinstance(one.frame, bytes)
    assert isinstance(hundred, ff.Deliver) and isinstance(hundred.frame, list) and len(hundred.frame) == 100
    assert isinstance(last, ff.Deliver) and isinstance(last.frame, bytes)
    assert json.loads(last.frame)["message"]["id"] == "101"


def test_a_deliver_with_a_list_of_frames_reaches_each_local_session_in_order() -> None:
    """The receiving side: what comes over the forward channel, decoded from the wire."""
    first, second, other = RecordingSession("s-1", 7), RecordingSession("s-2", 7), RecordingSession("s-3", 8)
    delivery, _, metrics = node(first, second, other)
    sender, _, _ = node()
    sender.to_users_in_order([7], receipts(3))
    packet = sender.cluster.packets[0]  # type: ignore[attr-defined]
    _, batch = ff.decode_frame(ff.encode_frame(ff.Batch(None, 1, [packet]), 0))
    assert isinstance(batch, ff.Batch)
    [got] = batch.packets
    assert isinstance(got, ff.Deliver)
    delivery.local.apply_deliver(got.users, got.frame, got.message_id, "s-2", got.ts, now_ms=1_004)
    assert [int(body["message"]["id"]) for body in texts(first.got)] == [1, 2, 3]
    assert second.got == [] and other.got == []  # excluded; not a recipient
    assert metrics.frames_out.value == 3
    assert metrics.take_latencies() == [0.004] * 3  # one relay latency per frame, as one packet each gave


def test_a_deliver_for_nobody_here_counts_no_frame_and_no_relay_latency() -> None:
    """The master relays most packets to users it has no session of: nothing is delivered here,
    so nothing is counted (the relay latency is a delivery's, on the node that delivered it)."""
    mine = RecordingSession("s-1", 7)
    delivery, _, metrics = node(mine)
    sender, _, _ = node()
    sender.to_users_in_order([8, 9], receipts(2))
    [packet] = sender.cluster.packets  # type: ignore[attr-defined]
    assert isinstance(packet, ff.Deliver)
    delivery.local.apply_deliver(packet.users, packet.frame, packet.message_id, None, packet.ts, now_ms=1_004)
    delivery.local.apply_deliver([7], packet.frame, packet.message_id, "s-1", packet.ts, now_ms=1_004)  # excluded
    assert mine.got == [] and metrics.frames_out.value == 0 and metrics.take_latencies() == []
    delivery.local.apply_deliver([8, 7], packet.frame, packet.message_id, None, packet.ts, now_ms=1_004)
    assert len(mine.got) == 2 and metrics.frames_out.value == 2 and metrics.take_latencies() == [0.004] * 2


def message(n: int, sender: int, chat: int, content: str = "hi") -> MessageOut:
    return MessageOut(Message(MessageId(n), f"c{n}", UserId(sender), chat, ChatType.FRIEND, MessageType.TEXT,
                              content, None, 1_000 + n))


def wire_ids(packet: ff.Packet) -> list[int]:
    """The message ids of a Deliver's frames, read from their JSON (one frame or a list)."""
    assert isinstance(packet, ff.Deliver)
    return [int(json.loads(text)["message"]["id"]) for text in packet.frames]


def test_two_delivers_join_only_from_one_node_to_the_same_users_but_the_same_session() -> None:
    one = ff.Deliver("dept-1", [7, 8], b'{"code":"message","message":{"id":"1"}}', "s-1", 1_001, 1)
    two = ff.Deliver("dept-1", [7, 8], b'{"code":"message","message":{"id":"2"}}', "s-1", 1_002, 2)
    joined = merged_deliver(one, two)
    assert joined == ff.Deliver("dept-1", [7, 8], [*one.frames, *two.frames], "s-1", 1_001, None)
    three = two._replace(frame=b'{"code":"message","message":{"id":"3"}}')
    assert joined is not None and merged_deliver(joined, three) == joined._replace(frame=[*one.frames, *two.frames, *three.frames])
    for other in (two._replace(users=[7]), two._replace(exclude=None), two._replace(src="dept-2"),
                  ff.Kick("dept-2", 7, None, 4000, None)):
        assert merged_deliver(one, other) is None
    assert merged_deliver(ff.SessionClose(7, "s-1"), two) is None


def test_a_joined_deliver_stays_within_its_frames_and_bytes() -> None:
    small = ff.Deliver("dept-1", [7], b"x" * 10, None, 1_000, None)
    full = small._replace(frame=[b"x" * 10] * ff.MAX_FRAMES_PER_DELIVER)
    assert merged_deliver(full._replace(frame=full.frame[1:]), small) is not None
    assert merged_deliver(full, small) is None
    big = small._replace(frame=b"x" * (MERGE_BYTES // 2))
    assert merged_deliver(big, big._replace(frame=b"x" * (MERGE_BYTES // 2))) is not None
    assert merged_deliver(big, big._replace(frame=b"x" * (MERGE_BYTES // 2 + 1))) is None


def test_a_forward_frame_of_joined_packets_stays_far_under_what_a_peer_takes() -> None:
    """After an outage a slave's link holds many unsent packets and sends link_max_batch of
    them in one forward frame: even if every one is a joined packet full to MERGE_BYTES, the
    frame stays under MAX_FRAME (about half of it). A bigger one would be refused, the link
    dropped, and the same frame sent again at every reconnect."""
    frames = [b"x" * (MERGE_BYTES // 4)] * 4
    packet = ff.Deliver("dept-1", [2**62, 2**62 + 1], frames, "s" * 32, 2**41, None)
    batch = ff.Batch(2**40, 2**40, [packet] * DEFAULTS.link_max_batch)
    assert len(ff.encode_frame(batch, 2**31)) < MAX_FRAME


def slave(*sessions: RecordingSession) -> tuple[Delivery, SlaveLink]:
    local = local_of("dept-1", *sessions)
    link = SlaveLink("dept-1", "ws://127.0.0.1:9/forward", b"s" * 32, local, clock_ms=lambda: 1_000)
    return Delivery(local, link), link


def test_a_slaves_messages_to_one_chat_leave_in_one_packet_until_it_is_sent() -> None:
    """A group commit acks and delivers its messages one after another: those of each chat
    (two senders here, interleaved) join the packet of that chat not yet sent, in order; a
    kick between them, or the packet's sending, starts a new one."""
    delivery, link = slave()
    window = link.peer.stream.window
    for n in range(1, 7):  # alice (1) to bob (2) and carol (3) to dave (4), interleaved
        sender, chat = (1, 2) if n % 2 else (3, 4)
        delivery.to_users([chat, sender], message(n, sender, chat), exclude=f"s-{sender}")
    assert [wire_ids(i.packet) for i in window.items] == [[1, 3, 5], [2, 4, 6]]
    assert [i.packet.message_id for i in window.items] == [None, None]  # type: ignore[union-attr]
    delivery.kick("dept-2", 9, None, CloseCode.POLICY, None)
    delivery.to_users([2, 1], message(7, 1, 2), exclude="s-1")  # after the kick: a packet of its own
    window.take_batch(256)  # sent
    delivery.to_users([2, 1], message(8, 1, 2), exclude="s-1")
    delivery.to_users([2, 1], message(9, 1, 2), exclude="s-1")
    packets = [i.packet for i in window.items]
    assert [type(p) for p in packets] == [ff.Deliver, ff.Deliver, ff.Kick, ff.Deliver, ff.Deliver]
    assert [wire_ids(p) for p in packets if isinstance(p, ff.Deliver)] == [[1, 3, 5], [2, 4, 6], [7], [8, 9]]
    assert [i.seq for i in window.items] == [1, 2, 3, 4, 5]


def test_a_message_never_joins_a_packet_past_one_for_any_of_its_users() -> None:
    """Alice writes to bob from two devices: her second device's message is in a packet of its
    own (another session to exclude), and her first device's next message may not join the
    first packet past it, or bob would get her messages out of the order they were acked.
    Carol's message to dave shares no user with them and is passed."""
    delivery, link = slave()
    delivery.to_users([2, 1], message(1, 1, 2), exclude="s-1")
    delivery.to_users([4, 3], message(2, 3, 4), exclude="s-3")
    delivery.to_users([2, 1], message(3, 1, 2), exclude="s-1")  # passes carol's, joins its own
    delivery.to_users([2, 1], message(4, 1, 2), exclude="s-5")  # alice's other device
    delivery.to_users([2, 1], message(5, 1, 2), exclude="s-1")
    assert [wire_ids(i.packet) for i in link.peer.stream.window.items] == [[1, 3], [2], [4], [5]]


def test_a_joined_packets_messages_reach_a_replaying_session_once_each() -> None:
    """On the receiving node, a frame of a joined packet carries no message id in the packet:
    a session whose offline replay already sent a message drops the live copy it held, as it
    does for a packet of one message (node/offline_replay.py `release`)."""
    delivery, link = slave()
    for n in (1, 2, 3):
        delivery.to_users([2, 1], message(n, 1, 2), exclude="s-1")
    [item] = link.peer.stream.window.items
    _, batch = ff.decode_frame(ff.encode_frame(ff.Batch(None, 1, [item.packet]), 0))
    assert isinstance(batch, ff.Batch)
    [got] = batch.packets
    assert isinstance(got, ff.Deliver) and got.message_id is None
    replaying, live = RecordingSession("s-2", 2, holding=[]), RecordingSession("s-3", 2)
    receiver, _, metrics = node(replaying, live)
    receiver.local.apply_deliver(got.users, got.frame, got.message_id, got.exclude, got.ts, now_ms=1_005)
    assert [int(body["message"]["id"]) for body in texts(live.got)] == [1, 2, 3]
    assert metrics.frames_out.value == 6
    release(replaying, replayed={2})  # type: ignore[arg-type]
    assert [int(body["message"]["id"]) for body in texts(replaying.got)] == [1, 3]


def test_a_listed_frame_without_a_readable_id_is_delivered_without_one_and_logged() -> None:
    """A frame in a list whose id cannot be read (a peer's bug) is still delivered: the replay's
    dedupe just cannot drop it. The warning gives its size, never its content."""
    with structlog.testing.capture_logs() as logs:
        assert ForwardedReply(b"secret, not json", UNKNOWN_ID).message_id() is None
        assert ForwardedReply(b'{"code":"message","message":{"id":"x"}}', UNKNOWN_ID).message_id() is None
    assert ForwardedReply(b'{"code":"receipt","message":{"id":"5"}}', UNKNOWN_ID).message_id() is None
    assert ForwardedReply(b'{"code":"message","message":{"id":"5"}}', UNKNOWN_ID).message_id() == 5
    assert [entry["event"] for entry in logs] == ["forwarded_frame_without_id"] * 2
    assert all("secret" not in str(entry) for entry in logs) and logs[0]["size"] == 16
