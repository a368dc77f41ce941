"""ForwardConnection back to back, as h11's tests do it: two sans-I/O objects joined by a fake
network (a list of messages per direction that the test can deliver, drop or tamper with), no
sockets. Covers the handshake, ordered delivery with acks, every refusal, resend after a dropped
link, rewind, restarts of either side, and the fencing epoch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack
import pytest

from vim_cluster.protocol import forward_frames as ff
from vim_cluster.protocol.forward import PeerStream
from vim_cluster.protocol.forward_connection import (
    MAX_FRAME,
    PRE_AUTH_MAX_FRAME,
    Acked,
    Admit,
    Connect,
    EndReason,
    EpochRaised,
    Fenced,
    Flush,
    ForwardConnection,
    Heartbeat,
    LinkEnded,
    LinkOpened,
    LinkState,
    LocalProtocolError,
    PacketsReceived,
    PeerAuthenticated,
    PeerIdle,
    PeerRole,
    Refuse,
)

SECRET = b"s" * 32
OTHER = b"o" * 32
SESSIONS = [(7, "s-1", "web", None), (8, "s-2", "pc", "u-8")]


def deliver(n: int) -> ff.Deliver:
    frame = b'{"code":"message","message":{"id":"%d"}}' % n
    return ff.Deliver("dept-1", (7, 8), frame, "s-1", 1000 + n, n)


def numbers(packets: list[ff.Packet]) -> list[int]:
    return [p.message_id or 0 for p in packets if isinstance(p, ff.Deliver)]


class Side:
    """One end: its connection, the events it saw, the packets it got (in order)."""

    def __init__(self, conn: ForwardConnection[Any]) -> None:
        self.conn = conn
        self.events: list[Any] = []
        self.got: list[ff.Packet] = []
        self.acked: list[Any] = []

    def take_events(self) -> None:
        for event in self.conn.events():
            self.events.append(event)
            if isinstance(event, PacketsReceived):
                self.got += event.packets
            elif isinstance(event, Acked):
                self.acked += [item.tag for item in event.items]

    @property
    def ended(self) -> LinkEnded | None:
        return self.conn.ended


class Network:
    """Two sides and the messages in flight between them (delivered by `run`)."""

    def __init__(self, slave: Side, master: Side) -> None:
        self.slave, self.master = slave, master
        self.to_master: list[bytes] = []
        self.to_slave: list[bytes] = []

    def collect(self) -> None:
        self.to_master += self.slave.conn.data_to_send()
        self.to_slave += self.master.conn.data_to_send()

    def run(self, admit: PeerStream[Any] | None | str = "new") -> None:
        """Delivers everything in flight until both sides are quiet; the master's owner admits
        every authenticated peer with `admit` (a new stream from its base by default)."""
        while True:
            self.collect()
            if not (self.to_master or self.to_slave):
                return
            for data in self.to_master:
                self.master.conn.receive_data(data)
            self.to_master = []
            for data in self.to_slave:
                self.slave.conn.receive_data(data)
            self.to_slave = []
            for side in (self.slave, self.master):
                before = len(side.events)
                side.take_events()
                for event in side.events[before:]:
                    if isinstance(event, PeerAuthenticated) and admit is not None:
                        stream = PeerStream.from_base(event.instance, event.base) if admit == "new" else admit
                        assert not isinstance(stream, str)
                        self.to_slave.append(self.master.conn.send(Admit(stream)))

    def flush(self) -> None:
        """Both sides send a batch (packets and acks) and the network delivers it."""
        for side in (self.slave, self.master):
            if side.conn.state is LinkState.OPEN and (side.conn.has_unsent() or side.conn.ack_moved()):
                target = self.to_master if side is self.slave else self.to_slave
                target.append(side.conn.send(Flush()))
        self.run()


def link(slave_stream: PeerStream[Any] | None = None, master_stream: PeerStream[Any] | str | None = "new", *,
         slave_epoch: int = 0, master_epoch: int = 0, slave_secret: bytes = SECRET, node: str = "dept-1",
         slave_instance: str = "es1", master_instance: str = "em1", role: PeerRole = PeerRole.SLAVE) -> Network:
    slave = Side(ForwardConnection(role, node, slave_secret, epoch=slave_epoch,
                                   stream=slave_stream or PeerStream(), instance=slave_instance))
    master = Side(ForwardConnection(PeerRole.MASTER, "master", SECRET, epoch=master_epoch,
                                    instance=master_instance))
    net = Network(slave, master)
    net.to_master.append(slave.conn.send(Connect(SESSIONS)))
    net.run(master_stream)
    return net


def queued(seqs: Iterable[int] = (), *, tagged: bool = True) -> tuple[Network, PeerStream[Any], PeerStream[Any]]:
    """(net, the slave's stream, the master's stream) of a new link whose slave queued
    deliver(n) for each n of `seqs`, tagged n (or untagged)."""
    net = link()
    stream, master_stream = net.slave.conn.stream, net.master.conn.stream
    assert stream is not None and master_stream is not None
    for n in seqs:
        stream.push(deliver(n), n if tagged else None)
    return net, stream, master_stream


def test_handshake_then_packets_both_ways_in_order_with_acks_carrying_tags() -> None:
    net = link()
    assert net.slave.conn.state is net.master.conn.state is LinkState.OPEN
    auth = [e for e in net.master.events if isinstance(e, PeerAuthenticated)]
    assert auth == [PeerAuthenticated("dept-1", PeerRole.SLAVE, "es1", 0, 0, 0, SESSIONS)]
    assert [e for e in net.slave.events if isinstance(e, LinkOpened)] == [LinkOpened("master", "em1", 0, 0)]
    assert net.slave.conn.max_message_size == net.master.conn.max_message_size == MAX_FRAME
    for n in range(1, 11):
        net.slave.conn.stream.push(deliver(n), f"t{n}")  # type: ignore[union-attr]
    assert net.master.conn.stream is not None
    net.master.conn.stream.push(deliver(99))
    net.flush()
    assert numbers(net.master.got) == list(range(1, 11)) and numbers(net.slave.got) == [99]
    net.flush()  # the acks
    assert net.slave.acked == [f"t{n}" for n in range(1, 11)]
    assert len(net.slave.conn.stream.window) == 0  # type: ignore[union-attr]
    assert not net.slave.conn.ack_moved() and not net.master.conn.ack_moved()
    assert ff.decode_frame(net.slave.conn.send(Heartbeat(5))) == (0, ff.Beat(5))


def test_the_master_holds_an_ack_until_its_forwards_are_done() -> None:
    net, stream, _ = queued((1, 2, 3))
    net.master.conn.receive_data(net.slave.conn.send(Flush()))
    assert net.master.conn.stream is not None
    for event in net.master.conn.events():
        assert isinstance(event, PacketsReceived) and event.first == 1
        net.master.conn.stream.hold(1, 2)  # forwarded to two nodes
        net.master.conn.stream.hold(3, 1)
    net.flush()
    assert net.slave.acked == []  # 1 is not done
    net.master.conn.stream.forward_done(1)
    net.master.conn.stream.forward_done(1)
    net.flush()
    assert net.slave.acked == [1, 2]
    net.master.conn.stream.forward_done(3)
    net.flush()
    assert net.slave.acked == [1, 2, 3]


def test_batches_respect_the_limit_and_resume_where_they_stopped() -> None:
    net, _, _ = queued(range(1, 8), tagged=False)
    while net.slave.conn.has_unsent():
        net.master.conn.receive_data(net.slave.conn.send(Flush(limit=3)))
        net.master.take_events()
    assert numbers(net.master.got) == list(range(1, 8))
    assert [e.first for e in net.master.events if isinstance(e, PacketsReceived)] == [1, 4, 7]


# --------------------------------------------------------------------------- resend and rewind


def test_after_a_dropped_link_everything_unacknowledged_is_resent_once_in_order() -> None:
    net, slave_stream, master_stream = queued(range(1, 6))
    net.master.conn.receive_data(net.slave.conn.send(Flush(limit=3)))  # 1..3 arrive
    net.master.take_events()
    net.slave.conn.send(Flush())  # 4..5 are sent, but the link drops: they never arrive
    for side in (net.slave, net.master):
        side.conn.close(EndReason.CLOSED, "connection lost")
        side.take_events()
    assert net.slave.ended == LinkEnded(EndReason.CLOSED, "connection lost")
    slave_stream.push(deliver(6), 6)  # queued while the link is down

    again = link(slave_stream, master_stream)  # the same processes reconnect
    assert [e.resending for e in again.slave.events if isinstance(e, LinkOpened)] == [3]
    again.flush()
    again.flush()
    assert numbers(net.master.got + again.master.got) == [1, 2, 3, 4, 5, 6]  # each once
    assert again.slave.acked == [1, 2, 3, 4, 5, 6]


def test_a_resend_of_what_arrived_is_dropped_as_duplicate() -> None:
    net, _, _ = queued((1, 2, 3), tagged=False)
    data = net.slave.conn.send(Flush())
    net.master.conn.receive_data(data)
    net.master.conn.receive_data(data)  # the same batch again (a resend)
    net.master.take_events()
    assert numbers(net.master.got) == [1, 2, 3] and net.master.conn.duplicates == 3


def test_rewind_keeps_what_the_peer_received_but_did_not_acknowledge() -> None:
    net, stream, master_stream = queued(range(1, 6))
    net.master.conn.receive_data(net.slave.conn.send(Flush()))
    net.master.take_events()
    master_stream.hold(3, 1)  # 3..5 not complete: the master acks 2
    net.flush()
    assert net.slave.acked == [1, 2]
    net.slave.conn.close()
    net.master.conn.close()
    again = link(stream, master_stream)  # welcome says 5 received: nothing is resent ...
    assert [e.resending for e in again.slave.events if isinstance(e, LinkOpened)] == [0]
    assert [i.seq for i in stream.window.items] == [3, 4, 5]  # ... but 3..5 stay until acked
    master_stream.forward_done(3)
    again.flush()
    assert again.slave.acked == [3, 4, 5]


def test_a_restarted_master_resumes_the_slaves_sequence_from_its_base() -> None:
    net, stream, _ = queued((1, 2))
    net.flush()
    net.flush()
    assert stream.window.acked_upto == 2
    stream.push(deliver(3), 3)  # queued while the master restarts
    again = link(stream, master_instance="em2")  # a new master process, no state of ours
    auth = [e for e in again.master.events if isinstance(e, PeerAuthenticated)]
    assert auth[0].base == 2 and stream.receiver.instance == "em2"
    again.flush()
    assert numbers(again.master.got) == [3]


def test_a_restarted_slave_starts_over_on_a_new_stream() -> None:
    net = link()
    master_stream = net.master.conn.stream
    assert master_stream is not None
    master_stream.push(deliver(1), "t1")
    net.master.conn.send(Flush())  # sent to the old process, never acked
    dropped = master_stream.window.drain()  # the owner drops the dead instance's queue
    assert [i.tag for i in dropped] == ["t1"]
    again = link(slave_instance="es2")
    again.slave.conn.stream.push(deliver(5))  # type: ignore[union-attr]
    again.flush()
    assert [e.first for e in again.master.events if isinstance(e, PacketsReceived)] == [1]


def test_a_slave_the_master_dropped_links_again_and_numbering_goes_on() -> None:
    """The master declared a slave dead (its lease lapsed) and dropped its stream, but the slave
    process lives on: its receiver expects the master's next number, so the master's new stream
    numbers on after what the slave says it received."""
    net, stream, master_stream = queued()
    master_stream.push(deliver(1))
    master_stream.push(deliver(2))
    net.flush()
    assert numbers(net.slave.got) == [1, 2]
    master_stream.window.drain()  # dropped by the master
    net.slave.conn.close()
    net.master.conn.close()
    slave = Side(ForwardConnection(PeerRole.SLAVE, "dept-1", SECRET, stream=stream, instance="es1"))
    master = Side(ForwardConnection(PeerRole.MASTER, "master", SECRET, instance="em1"))
    again = Network(slave, master)
    again.to_master.append(slave.conn.send(Connect()))
    again.run(admit=None)
    [auth] = [e for e in master.events if isinstance(e, PeerAuthenticated)]
    assert auth.received == 2
    fresh: PeerStream[Any] = PeerStream.from_base(auth.instance, auth.base, auth.received)
    again.to_slave.append(master.conn.send(Admit(fresh)))
    again.run()
    assert slave.conn.state is master.conn.state is LinkState.OPEN
    fresh.push(deliver(3))
    again.flush()
    assert numbers(slave.got) == [3] and slave.ended is None


# --------------------------------------------------------------------------- refusals


def test_a_slave_without_the_secret_is_refused_and_told_so() -> None:
    net = link(slave_secret=OTHER, master_stream=None)
    # the slave sees the master's MAC is wrong, sends its own proof anyway, and ends
    assert net.slave.ended == LinkEnded(
        EndReason.BAD_MAC, "this node and the master hold different cluster secrets (compare their vim.cluster.secret-file)")
    assert net.master.ended is not None and net.master.ended.reason is EndReason.BAD_MAC
    assert net.master.ended.close_code == 1008
    assert not [e for e in net.master.events if isinstance(e, PeerAuthenticated)]


def test_a_forged_auth_is_refused_with_a_refused_frame() -> None:
    master = ForwardConnection[Any](PeerRole.MASTER, "master", SECRET)
    master.receive_data(ff.encode_frame(ff.Hello("evil", PeerRole.SLAVE, "e", "n" * 32), 0))
    [challenge_data] = master.data_to_send()
    _, challenge = ff.decode_frame(challenge_data)
    assert isinstance(challenge, ff.Challenge)
    master.receive_data(ff.encode_frame(ff.Auth(challenge.mac, 0, 0), 0))  # the reflected MAC
    [refused] = master.data_to_send()
    assert isinstance(ff.decode_frame(refused)[1], ff.Refused)
    events = list(master.events())
    assert [type(e) for e in events] == [LinkEnded]
    assert isinstance(events[0], LinkEnded) and events[0].reason is EndReason.BAD_MAC
    assert master.max_message_size == PRE_AUTH_MAX_FRAME


def test_a_peer_with_the_masters_own_node_id_is_refused() -> None:
    master = ForwardConnection[Any](PeerRole.MASTER, "master", SECRET)
    master.receive_data(ff.encode_frame(ff.Hello("master", PeerRole.SLAVE, "i", "n1"), 0))
    _, challenge = ff.decode_frame(master.data_to_send()[0])
    assert isinstance(challenge, ff.Challenge)
    master.receive_data(ff.encode_frame(ff.Auth(ff.slave_mac(SECRET, "master", "n1", challenge.nonce), 0, 0), 0))
    assert master.ended is not None and master.ended.reason is EndReason.WRONG_NODE
    assert isinstance(ff.decode_frame(master.data_to_send()[0])[1], ff.Refused)
    net = link(node="master", master_stream=None)  # a slave given its own URL as the master's
    assert net.slave.ended is not None and net.slave.ended.reason is EndReason.WRONG_NODE
    assert net.master.ended is not None and net.master.ended.reason is EndReason.REFUSED_BY_PEER


def test_a_slave_expecting_another_master_refuses_this_one() -> None:
    slave = ForwardConnection[Any](PeerRole.SLAVE, "dept-1", SECRET, expect_peer="master-b")
    master = ForwardConnection[Any](PeerRole.MASTER, "master", SECRET)
    master.receive_data(slave.send(Connect()))
    for data in master.data_to_send():
        slave.receive_data(data)
    assert slave.ended is not None and slave.ended.reason is EndReason.WRONG_NODE
    assert isinstance(ff.decode_frame(slave.data_to_send()[-1])[1], ff.Refused)


def test_the_owner_refuses_an_authenticated_peer() -> None:
    net = link(master_stream=None)
    assert net.master.conn.state is LinkState.AWAIT_ADMISSION
    net.to_slave.append(net.master.conn.send(Refuse("unknown node id 'dept-1'")))
    net.run()
    assert net.master.ended == LinkEnded(EndReason.REFUSED, "unknown node id 'dept-1'")
    assert net.slave.ended == LinkEnded(EndReason.REFUSED_BY_PEER, "master refused: unknown node id 'dept-1'")
    assert net.slave.ended.close_code == 1008


@pytest.mark.parametrize("authenticated", [False, True])
def test_an_oversize_message_before_authentication_is_refused(authenticated: bool) -> None:
    big = ff.encode_frame(ff.Sessions([(n, f"session-{n}", "web", None) for n in range(500)]), 0)
    assert len(big) > PRE_AUTH_MAX_FRAME
    if authenticated:  # after the MAC checked out, the session list may be big
        net = link(master_stream=None)
        assert net.master.conn.state is LinkState.AWAIT_ADMISSION
        return
    master = ForwardConnection[Any](PeerRole.MASTER, "master", SECRET)
    master.receive_data(big)
    ended = master.ended
    assert ended is not None and ended.reason is EndReason.OVERSIZE and ended.close_code == 1009
    slave = ForwardConnection[Any](PeerRole.SLAVE, "dept-1", SECRET)
    slave.send(Connect())
    slave.receive_data(big)  # a master that did not prove itself either
    assert slave.ended is not None and slave.ended.reason is EndReason.OVERSIZE


@pytest.mark.parametrize("data", [
    "text",
    b"\xc1",
    msgpack.packb({"t": "hello"}),
    msgpack.packb([99, 0]),
    msgpack.packb([0, "epoch", "n", "slave", "i", "x"]),
    msgpack.packb([0, 0, "n", "king", "i", "x"]),  # no such role
    msgpack.packb([4, 0]),  # a field missing
    msgpack.packb([6, 0, None, 1, [["x", 1]]]),  # not a packet
    msgpack.packb([6, 0, None, 1, [[1, "s", 99]]]),  # an unknown packet kind
    msgpack.packb([6, 0, None, 1, [["src", ["7"], b"{}", None, 1, None, 0]]]),  # a user id as a string
    msgpack.packb([6, 0, "x", 1, []]),
])
def test_what_is_not_a_forward_frame_is_refused(data: Any) -> None:
    master = ForwardConnection[Any](PeerRole.MASTER, "master", SECRET)
    master.receive_data(data)
    assert master.ended is not None and master.ended.reason is EndReason.UNKNOWN_FRAME
    assert master.ended.close_code == 1002
    master.receive_data(data)  # ignored once ended
    assert [type(e) for e in master.events()] == [LinkEnded]


def test_frames_in_the_wrong_state_are_refused() -> None:
    master = ForwardConnection[Any](PeerRole.MASTER, "master", SECRET)
    master.receive_data(ff.encode_frame(ff.Batch(0, 1, [ff.SessionClose(1, "s")]), 0))  # before hello
    assert master.ended is not None and master.ended.reason is EndReason.WRONG_STATE
    master = ForwardConnection[Any](PeerRole.MASTER, "master", SECRET)
    master.receive_data(ff.encode_frame(ff.Hello("m2", PeerRole.MASTER, "i", "n"), 0))
    assert master.ended is not None and master.ended.reason is EndReason.WRONG_STATE
    net = link()
    net.master.conn.receive_data(ff.encode_frame(ff.Welcome(0), 0))  # a welcome to the master
    assert net.master.ended is not None and net.master.ended.reason is EndReason.WRONG_STATE
    slave = ForwardConnection[Any](PeerRole.SLAVE, "dept-1", SECRET)
    slave.receive_data(ff.encode_frame(ff.Welcome(0), 0))  # before it even said hello
    assert slave.ended is not None and slave.ended.reason is EndReason.WRONG_STATE


def test_sequence_gaps_and_impossible_acks_are_refused() -> None:
    net = link()
    net.master.conn.receive_data(ff.encode_frame(ff.Batch(None, 2, [deliver(2)]), 0))  # 1 missing
    assert net.master.ended is not None and net.master.ended.reason is EndReason.OUT_OF_ORDER
    assert "gap" in net.master.ended.detail
    net = link()
    net.slave.conn.receive_data(ff.encode_frame(ff.Batch(1, 1, []), 0))  # acks a packet never sent
    assert net.slave.ended is not None and net.slave.ended.reason is EndReason.OUT_OF_ORDER


def test_a_resend_claim_beyond_what_was_sent_is_refused() -> None:
    stream: PeerStream[Any] = PeerStream()
    net = link(stream, master_stream=None)
    assert net.master.conn._auth is not None
    net.master.conn._auth = ff.Auth("", 5, 0)  # the slave claimed it got 5 of our packets: we sent none
    net.to_slave.append(net.master.conn.send(Admit(PeerStream.from_base("es1", 0))))
    assert net.master.ended is not None and net.master.ended.reason is EndReason.OUT_OF_ORDER
    slave = ForwardConnection[Any](PeerRole.SLAVE, "dept-1", SECRET)
    slave.send(Connect())
    master = ForwardConnection[Any](PeerRole.MASTER, "master", SECRET)
    master.receive_data(ff.encode_frame(ff.Hello("dept-1", PeerRole.SLAVE, "i", slave._nonce), 0))
    for data in master.data_to_send():
        slave.receive_data(data)
    slave.receive_data(ff.encode_frame(ff.Welcome(3), 0))  # a welcome claiming packets we never sent
    assert slave.ended is not None and slave.ended.reason is EndReason.OUT_OF_ORDER


def test_sending_what_does_not_fit_the_state_is_a_local_error() -> None:
    slave = ForwardConnection[Any](PeerRole.SLAVE, "dept-1", SECRET)
    with pytest.raises(LocalProtocolError):
        slave.send(Flush())
    with pytest.raises(LocalProtocolError):
        slave.send(Heartbeat())
    slave.send(Connect())
    with pytest.raises(LocalProtocolError):
        slave.send(Connect())
    with pytest.raises(LocalProtocolError):
        slave.send(Admit(PeerStream()))
    slave.close()
    with pytest.raises(LocalProtocolError):
        slave.send(Flush())


# --------------------------------------------------------------------------- fencing epochs


def test_a_slave_follows_the_masters_epoch_and_says_so() -> None:
    net = link(slave_epoch=0, master_epoch=4)
    assert net.slave.conn.state is LinkState.OPEN and net.slave.conn.epoch == 4
    assert [e for e in net.slave.events if isinstance(e, EpochRaised)] == [EpochRaised(0, 4, "master")]
    net.slave.conn.stream.push(deliver(1))  # type: ignore[union-attr]
    data = net.slave.conn.send(Flush())
    assert ff.decode_frame(data)[0] == 4  # every frame carries the epoch it follows
    net.master.conn.set_epoch(5)  # the master re-took its lease with a new epoch
    net.master.conn.receive_data(data)
    net.master.take_events()
    assert net.master.ended is not None and net.master.ended.reason is EndReason.FENCED  # in flight: resent later
    assert [e for e in net.master.events if isinstance(e, Fenced)] == [Fenced(4, 5, "dept-1")]


def test_a_slave_refuses_frames_of_a_master_older_than_the_epoch_it_knows() -> None:
    net = link(slave_epoch=0, master_epoch=4)
    net.slave.conn.set_epoch(5)  # the slave learned of a takeover (epoch 5) elsewhere
    net.master.conn.stream.push(deliver(1))  # type: ignore[union-attr]
    net.to_slave.append(net.master.conn.send(Flush()))  # the old master (epoch 4) still relays: refused
    net.run()
    assert [e for e in net.slave.events if isinstance(e, Fenced)] == [Fenced(4, 5, "master")]
    assert net.slave.ended is not None and net.slave.ended.reason is EndReason.FENCED
    assert net.slave.got == []
    assert net.master.ended is not None and net.master.ended.reason is EndReason.REFUSED_BY_PEER
    assert "fenced" in net.master.ended.detail


def test_a_stale_master_is_fenced_at_the_challenge() -> None:
    slave = ForwardConnection[Any](PeerRole.SLAVE, "dept-1", SECRET, epoch=5)
    master = ForwardConnection[Any](PeerRole.MASTER, "master", SECRET, epoch=5)
    master.receive_data(slave.send(Connect()))
    slave.set_epoch(6)  # a takeover happened meanwhile
    for data in master.data_to_send():
        slave.receive_data(data)
    assert [type(e) for e in slave.events()] == [Fenced, LinkEnded]
    assert slave.ended is not None and slave.ended.reason is EndReason.FENCED


def test_a_master_that_hears_of_a_newer_epoch_ends_the_link_and_reports_it() -> None:
    net = link(slave_epoch=7, master_epoch=5, master_stream=None)
    assert [e for e in net.master.events if isinstance(e, EpochRaised)] == [EpochRaised(5, 7, "dept-1")]
    assert net.master.ended is not None and net.master.ended.reason is EndReason.NEWER_EPOCH
    assert net.master.conn.epoch == 5  # a master never adopts another master's epoch
    # The slave fenced the stale master at its challenge, after sending the proof that told it.
    assert net.slave.ended is not None and net.slave.ended.reason is EndReason.FENCED


def _challenge_nonce(master: ForwardConnection[Any]) -> str:
    [data] = master.data_to_send()
    _, challenge = ff.decode_frame(data)
    assert isinstance(challenge, ff.Challenge)
    return challenge.nonce


def test_an_older_epoch_in_a_hello_is_fine_but_not_after_it() -> None:
    master = ForwardConnection[Any](PeerRole.MASTER, "master", SECRET, epoch=3)
    master.receive_data(ff.encode_frame(ff.Hello("dept-1", PeerRole.SLAVE, "i", "n"), 1))
    assert master.state is LinkState.AWAIT_AUTH
    mac = ff.slave_mac(SECRET, "dept-1", "n", _challenge_nonce(master))
    master.receive_data(ff.encode_frame(ff.Auth(mac, 0, 0), 2))
    assert [type(e) for e in master.events()] == [Fenced, LinkEnded]


def test_an_outsiders_epoch_is_not_heard_before_it_proved_the_secret() -> None:
    """Attack: a hello of epoch 10**18 on the master's forward port, without the secret. It used
    to raise EpochRaised (the master stepped down and took its lease again at 10**18 + 1), and
    an auth with a wrong MAC did the same or counted as fenced. Now only a proved peer's epoch
    counts: the hello gets its challenge, the wrong MAC ends the link as BAD_MAC, no epoch event."""
    huge = 10**18
    master = ForwardConnection[Any](PeerRole.MASTER, "master", SECRET, epoch=3)
    master.receive_data(ff.encode_frame(ff.Hello("evil", PeerRole.SLAVE, "i", "n"), huge))
    assert master.state is LinkState.AWAIT_AUTH and list(master.events()) == []
    assert ff.decode_frame(master.data_to_send()[0])[0] == 3
    master.receive_data(ff.encode_frame(ff.Auth("0" * 64, 0, 0), huge))
    assert [type(e) for e in master.events()] == [LinkEnded]
    assert master.ended is not None and master.ended.reason is EndReason.BAD_MAC and master.epoch == 3
    for frame in (ff.Auth("0" * 64, 0, 0), ff.Batch(None, 1, [])):  # out of turn, before any hello
        other = ForwardConnection[Any](PeerRole.MASTER, "master", SECRET, epoch=3)
        other.receive_data(ff.encode_frame(frame, huge))
        assert [type(e) for e in other.events()] == [LinkEnded] and other.epoch == 3


def test_a_fake_masters_epoch_does_not_raise_a_slaves_fence() -> None:
    """Attack: a master without the secret (a master-url the attacker answers) challenges with
    epoch 10**18. The slave used to follow it before checking the MAC (its fence raised for
    good: the real master's frames fenced as older). Now it ends the link as BAD_MAC at its epoch."""
    slave = ForwardConnection[Any](PeerRole.SLAVE, "dept-1", SECRET, epoch=4)
    fake = ForwardConnection[Any](PeerRole.MASTER, "master", b"another-secret-of-32-bytes......", epoch=10**18)
    fake.receive_data(slave.send(Connect()))
    for data in fake.data_to_send():
        slave.receive_data(data)
    assert [type(e) for e in slave.events()] == [LinkEnded]
    assert slave.ended is not None and slave.ended.reason is EndReason.BAD_MAC and slave.epoch == 4


def test_an_operator_links_sends_a_kick_and_sees_it_acked() -> None:
    net = link(role=PeerRole.OPERATOR, node="operator-1", master_epoch=2)
    [auth] = [e for e in net.master.events if isinstance(e, PeerAuthenticated)]
    assert auth.role is PeerRole.OPERATOR
    net.slave.conn.stream.push(ff.Kick("dept-2", 7, None, 4002, None), "kick")  # type: ignore[union-attr]
    net.flush()
    net.flush()
    assert [type(p) for p in net.master.got] == [ff.Kick] and net.slave.acked == ["kick"]


# --------------------------------------------------------------------------- pre-encoded client frames


def test_a_deliver_packet_carries_the_client_frame_as_the_codecs_json_text_untouched() -> None:
    """The sending node puts the JSON its text clients get into the packet; the receiving node
    gives its text clients those very bytes and re-encodes only for MessagePack clients."""
    from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId
    from vim_cluster.node.delivery import ForwardedFrame, deliver_body
    from vim_cluster.protocol.codec import OutFrame, encode
    from vim_cluster.protocol.frames import MessageOut

    message = Message(MessageId(123456789), "c-1", UserId(7), 8, ChatType.FRIEND, MessageType.TEXT,
                      "grüß dich \U0001f600", {"k": [1, 2.5, None]}, 1_700_000_000_000)
    reply = MessageOut(message)
    sent = OutFrame(reply)
    frame, message_id = deliver_body([sent])
    packet = ff.Deliver("dept-1", [8], frame, None, 1, message_id)
    _, batch = ff.decode_frame(ff.encode_frame(ff.Batch(None, 1, [packet]), 0))
    assert isinstance(batch, ff.Batch)
    [got] = batch.packets
    assert isinstance(got, ff.Deliver) and got.message_id == 123456789
    assert isinstance(got.frame, bytes)
    out = ForwardedFrame(got.frame, got.message_id)
    text = out.encoded(False)
    assert (text.encode() if isinstance(text, str) else text) == got.frame  # untouched
    assert text == encode(reply, False) and out.encoded(True) == encode(reply, True)
    assert out.reply.message_id() == 123456789 and out.reply.code == "message"
    assert out.wire_object() == sent.wire_object()


def test_a_batch_bigger_than_a_peer_takes_goes_in_parts_in_order() -> None:
    """Messages whose content JSON escapes to six times its bytes (control characters) pile up
    on a link (an outage, an attacker): 256 of them would make a 25 MB forward frame, which the
    peer refuses (MAX_FRAME) and would get again at every reconnect. The flush halves such a
    batch until it fits; the rest follows in the next flushes, in order."""
    big = b'{"code":"message","message":{"content":"' + b"\\u0001" * 16384 + b'"}}'
    net, stream, _ = queued(tagged=False)
    for n in range(1, 257):
        stream.push(ff.Deliver("dept-1", (7, 8), big, "s-1", 1000 + n, n))
    sizes = []
    while net.slave.conn.has_unsent():
        data = net.slave.conn.send(Flush(256))
        sizes.append(len(data))
        net.master.conn.receive_data(data)
        net.master.take_events()
    assert max(sizes) <= MAX_FRAME and len(sizes) > 1
    assert numbers(net.master.got) == list(range(1, 257))


def test_the_largest_message_a_node_accepts_fits_in_one_forward_frame() -> None:
    """vim.websocket.max-content is at most 2 MiB (config.py): a message of that much content,
    every byte a control character (six bytes in JSON), with an `extend` as large, for a group
    of 10,000 members, is still one forward frame a peer takes."""
    from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId
    from vim_cluster.node.delivery import deliver_body
    from vim_cluster.protocol.codec import OutFrame
    from vim_cluster.protocol.frames import MessageOut

    limit = 2 * 1024 * 1024
    extend = {"k": "x" * (limit - 10)}
    message = Message(MessageId(2**62), "c" * 64, UserId(2**62), 2**62, ChatType.GROUP, MessageType.TEXT,
                      "\x01" * limit, extend, 2**41)
    frame, message_id = deliver_body([OutFrame(MessageOut(message))])
    packet = ff.Deliver("dept-1", [2**62 + n for n in range(10_000)], frame, "s" * 32, 2**41, message_id)
    assert len(ff.encode_frame(ff.Batch(2**40, 2**40, [packet]), 2**31)) <= MAX_FRAME


def test_a_beat_on_an_open_link_says_the_peer_sent_all_it_held() -> None:
    """PeerIdle: a peer beats only with nothing unsent, so what it held has arrived (the master
    then stops counting a restarted slave's backlog as possibly lost: node/forward_hub.py)."""
    net, _, _ = queued((1, 2))
    net.flush()
    before = len(net.master.events)
    net.master.conn.receive_data(net.slave.conn.send(Heartbeat(5)))
    net.master.take_events()
    assert net.master.events[before:] == [PeerIdle()]
    assert numbers(net.master.got) == [1, 2] and net.master.ended is None
