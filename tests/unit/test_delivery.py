"""Several frames for the same users cross the cluster as one Deliver packet with a list of
frames (node/delivery.py, protocol/forward_frames.py): a sender's receipts of one `received`.
Driven without sockets: sessions record what they are pushed, the cluster link what it is
given."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from vim_cluster.node.delivery import Delivery, LocalDelivery, Unlinked
from vim_cluster.node.local_sessions import LocalSessions
from vim_cluster.node.metrics import NodeMetrics
from vim_cluster.protocol import forward_frames as ff
from vim_cluster.protocol.codec import OutFrame
from vim_cluster.protocol.frames import Receipt


@attrs.define
class RecordingQueue:
    got: list[OutFrame] = attrs.Factory(list)

    def push(self, frame: OutFrame) -> bool:
        self.got.append(frame)
        return True


@attrs.define
class RecordingSession:
    """What LocalSessions.deliver needs of a session: its ids, `holding` (None: no offline
    replay running) and its send queue's `push`."""

    id: str
    user_id: int
    send_queue: RecordingQueue = attrs.Factory(RecordingQueue)
    holding: list[OutFrame] | None = None

    @property
    def got(self) -> list[OutFrame]:
        return self.send_queue.got


def texts(frames: Sequence[OutFrame]) -> list[dict[str, Any]]:
    return [json.loads(frame.encoded(False)) for frame in frames]


def receipts(count: int) -> list[Receipt]:
    return [Receipt(i, 7, by=8) for i in range(1, count + 1)]


def node(*sessions: RecordingSession) -> tuple[Delivery, Unlinked, NodeMetrics]:
    local_sessions = LocalSessions()
    for session in sessions:
        local_sessions.add(session)  # type: ignore[arg-type]
    metrics = NodeMetrics("dept-2")
    cluster = Unlinked("dept-2", clock_ms=lambda: 1_000)
    return Delivery(LocalDelivery("dept-2", local_sessions, metrics), cluster), cluster, metrics


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
    frames = [json.loads(text) for p in packets if isinstance(p, ff.Deliver) for text in p.frame]
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
