"""A slave's forward queue is bounded (vim.cluster.forward-queue-bytes): past the cap it empties
its Delivers (kept sequence numbers), asks the master for a catch-up with a CatchUp packet of
its own, and queues no Delivers until it links again; the master asks every other node to
catch up and holds its own sessions' Delivers until its own catch-up is delivered
(node/forward_link.py, node/forward_hub.py). Driven without sockets."""

from __future__ import annotations

import attrs
import structlog.testing
import trio
import trio.testing

from vim_cluster.errors import CloseCode
from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId
from vim_cluster.node.forward_link import SlaveLink
from vim_cluster.node.local_sessions import Session
from vim_cluster.node.roles import hand_over
from vim_cluster.node.send_queue import SendQueue
from vim_cluster.protocol import forward_frames as ff
from vim_cluster.protocol.codec import OutFrame
from vim_cluster.protocol.forward import UnackedWindow
from vim_cluster.protocol.forward_connection import Acked, PacketsReceived
from vim_cluster.protocol.frames import MessageOut
from vim_cluster.tunables import DEFAULTS

from .test_catch_up_asked import (
    FakeCatchUp,
    StreamSocket,
    deliver,
    frame,
    ids,
    peer_of,
    queued,
    relay_with,
)
from .test_delivery import RecordingSession, local_of
from .test_session_backlog import read, wire

CAP = 65536


def capped_slave(now: list[int], master_features: frozenset[str] = frozenset({ff.CATCH_UP_FEATURE}),
                 dropped: list[int] | None = None) -> SlaveLink:
    link = SlaveLink("dept-2", "ws://127.0.0.1:9/forward", b"s" * 32, local_of("dept-2"), clock_ms=lambda: now[0],
                     tunables=attrs.evolve(DEFAULTS, link_queue_bytes=CAP),
                     on_dropped=(dropped.append if dropped is not None else lambda frames: None))
    link.master_features = master_features  # as learnt at its last link-up
    return link


def message(n: int) -> list[OutFrame]:
    """A message frame (`n`: its id) of about 160 bytes."""
    out = frame(n)
    out.payload(False)  # encoded once, as the codec does
    return [out]


def held(link: SlaveLink) -> list[ff.Packet]:
    return [item.packet for item in link.peer.stream.window.items]


def sizes(link: SlaveLink) -> int:
    return sum(item.packet.size for item in link.peer.stream.window.items if isinstance(item.packet, ff.Deliver))


def test_empty_out_keeps_every_sequence_number_and_returns_what_it_replaced() -> None:
    window: UnackedWindow[None] = UnackedWindow()
    kick = ff.Kick("dept-1", 7, None, 4001, None)
    for packet in (deliver(1), kick, deliver(2)):
        window.push(packet)
    window.take_batch(2)  # the first two went out already
    stand_in = ff.Deliver("dept-2", [], b"", None, 0)
    replaced = window.empty_out(lambda p: stand_in if isinstance(p, ff.Deliver) else None)
    assert replaced == [deliver(1), deliver(2)]
    assert [(item.seq, item.packet) for item in window.items] == [(1, stand_in), (2, kick), (3, stand_in)]
    assert window.sent_upto == 2 and window.next_seq == 4
    assert window.take_batch(10) == (3, [stand_in])


async def test_an_unlinked_slave_past_its_cap_empties_its_delivers_asks_the_catch_up_and_drops_until_linked() -> None:
    now = [10_000]
    dropped: list[int] = []
    link = capped_slave(now, dropped=dropped)
    before = 0
    with structlog.testing.capture_logs() as logs:
        n = 0
        while not dropped:
            now[0] += 1
            before = link.queued_bytes
            link.deliver([2 + n % 2], message(n), None)  # alternating users: no two join
            assert dropped or link.queued_bytes == sizes(link)
            n += 1
        link.kick("dept-1", 9, None, CloseCode.OTHER_LOGIN, None)
    assert before >= CAP > before - len(message(n - 2)[0].payload(False)), "emptied at the first after the cap"
    packets = held(link)  # the messages joined into a few packets (up to 32 KiB each)
    empty = ff.Deliver("dept-2", [], b"", None, 0)
    emptied = len(packets) - 2
    assert 2 <= emptied < n and packets[:emptied] == [empty] * emptied, "every Deliver held is emptied"
    assert packets[emptied] == ff.CatchUp(10_001, "dept-2"), "since the oldest emptied one was queued"
    assert isinstance(packets[emptied + 1], ff.Kick), "other packets are kept"
    assert dropped == [n] and link.dropping and link.queued_bytes == 0
    [overflow] = [e for e in logs if e["event"] == "forward_queue_overflow"]
    assert overflow["dropped_frames"] == n and overflow["since_ms"] == 10_001 and overflow["cap_bytes"] == CAP
    link.deliver([2], message(1000), None)  # still unlinked: in the store, the catch-up brings it
    assert len(held(link)) == emptied + 2 and dropped == [n, 1]
    link.dropping = False  # what a link-up does (run())
    link.deliver([2], message(1001), None)
    assert held(link)[-1].kind == ff.DELIVER and link.queued_bytes == sizes(link) > 0


async def test_acks_free_the_count_and_a_linked_slave_past_its_cap_asks_without_dropping_after() -> None:
    now = [10_000]
    link = capped_slave(now)
    link.connected = True
    for n in range(20):
        link.deliver([2], message(n), None)
        link.kick("dept-1", 9, None, CloseCode.OTHER_LOGIN, None)  # no Deliver joins one before it
    assert link.queued_bytes == sizes(link) > 0
    link.peer.stream.window.take_batch(40)
    link.link_event(link.peer, Acked(link.peer.stream.window.ack(10)))
    assert link.queued_bytes == sizes(link) > 0 and len(link.peer) == 30
    link.link_event(link.peer, Acked(link.peer.stream.window.ack(link.peer.stream.window.next_seq - 1)))
    assert link.queued_bytes == 0
    while not any(isinstance(p, ff.CatchUp) for p in held(link)):
        link.deliver([2], message(99), None)
    assert not link.dropping, "linked: what comes next goes after the CatchUp"
    link.deliver([2], message(100), None)
    assert held(link)[-1].kind == ff.DELIVER


def test_past_its_cap_a_slave_whose_master_is_of_an_earlier_release_keeps_everything_and_says_so_once() -> None:
    now = [10_000]
    dropped: list[int] = []
    link = capped_slave(now, master_features=frozenset({ff.LEAVING_FEATURE}), dropped=dropped)
    with structlog.testing.capture_logs() as logs:
        for n in range(600):
            link.deliver([2 + n % 2], message(n), None)
    assert link.queued_bytes > CAP and not dropped and not link.dropping
    assert not any(isinstance(p, ff.CatchUp) for p in held(link))
    assert [e["event"] for e in logs].count("forward_queue_over_cap") == 1


def test_a_master_names_the_catch_up_feature() -> None:
    relay = relay_with(None, RecordingSession("s-3", 3), [1])
    assert {ff.CATCH_UP_FEATURE, ff.LEAVING_FEATURE} <= ff.features_of(relay.instance)


async def test_a_slaves_catch_up_packet_asks_every_other_slave_and_holds_the_masters_own_delivers_until_its_catch_up(
) -> None:
    carol = RecordingSession("s-3", 2)  # user 2 on the master
    catch_up = FakeCatchUp(carol, replayed=5)
    now = [50_000]
    relay = relay_with(catch_up, carol, now)
    asking, dept1 = peer_of(relay, "dept-2"), peer_of(relay, "dept-1")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            relay._tasks = nursery  # serving
            relay.link_event(asking, PacketsReceived(1, [deliver(1), ff.CatchUp(42_000, "dept-2"), deliver(6)]))
            assert queued(dept1) == [ff.CatchUp(42_000, "dept-2")]
            assert queued(asking) == [], "the asking slave is not asked"
            assert catch_up.missed == [42_000]
            relay.link_event(asking, PacketsReceived(4, [deliver(7)]))
            await trio.testing.wait_all_tasks_blocked()
            assert ids(carol) == [1], "a Deliver after the CatchUp reached an own session before the catch-up"
            catch_up.go.set()
    assert ids(carol) == [1, 5, 6, 7]
    assert relay._held_local is None


async def test_the_masters_held_delivers_go_out_after_the_warm_up_if_its_catch_up_hangs(
    autojump_clock: trio.abc.Clock,
) -> None:
    carol = RecordingSession("s-3", 2)
    catch_up = FakeCatchUp(carol)
    relay = relay_with(catch_up, carol, [50_000])
    asking = peer_of(relay, "dept-2")
    with structlog.testing.capture_logs() as logs, trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            relay._tasks = nursery
            relay.link_event(asking, PacketsReceived(1, [ff.CatchUp(42_000, "dept-2"), deliver(6)]))
            start = trio.current_time()
            while relay._held_local is not None:
                await trio.sleep(0.1)
            assert trio.current_time() - start >= relay.tunables.link_warmup_s
            assert ids(carol) == [6]
            nursery.cancel_scope.cancel()
    assert "catch_up_slow" in [e["event"] for e in logs]


def test_a_role_change_hands_over_the_emptied_queues_catch_up_and_the_count() -> None:
    """A standby's or slave's link is replaced (roles.hand_over): the next link sends its
    CatchUp and counts the Delivers it takes; a relay that takes over asks for the catch-up."""
    now = [10_000]
    old = capped_slave(now)
    while not any(isinstance(p, ff.CatchUp) for p in held(old)):
        now[0] += 1
        old.deliver([2], message(now[0]), None)
    old.dropping = False
    old.deliver([2], message(1), None)
    new = capped_slave(now)
    hand_over(old, new, "dept-2")
    assert ff.CatchUp(10_001, "dept-2") in held(new)
    assert new.queued_bytes == sizes(new) > 0
    carol = RecordingSession("s-3", 3)
    catch_up = FakeCatchUp(carol)
    relay = relay_with(catch_up, carol, now)
    dept1 = peer_of(relay, "dept-1")
    hand_over(old, relay, "dept-2")
    assert queued(dept1)[0] == ff.CatchUp(10_001, "dept-2") and catch_up.missed == [10_001]


def test_one_message_larger_than_the_cap_alone_empties_nothing() -> None:
    now = [10_000]
    dropped: list[int] = []
    link = capped_slave(now, dropped=dropped)
    content = "\u0001" * 16_000  # escaped 6x in JSON: the largest frame a default max-content allows
    huge = OutFrame(MessageOut(Message(MessageId(1), "c1", UserId(1), 2, ChatType.FRIEND, MessageType.TEXT,
                                       content, None, 1_000)))
    link.deliver([2], [huge], None)
    assert link.queued_bytes > CAP and not dropped and held(link)[0].kind == ff.DELIVER
    now[0] += 1
    link.deliver([3], message(2), None)  # the queue reached its cap: this one empties it
    assert dropped == [2] and ff.CatchUp(10_000, "dept-2") in held(link)


async def test_the_master_holds_only_the_asking_slaves_delivers_for_its_own_sessions() -> None:
    # dept-1 did not ask: its messages reach carol at once, not after dept-2's catch-up (before,
    # every slave's Delivers waited for it, link_warmup_s at most, and then went out at once).
    carol = RecordingSession("s-3", 2)
    catch_up = FakeCatchUp(carol, replayed=5)
    relay = relay_with(catch_up, carol, [50_000])
    asking, dept1 = peer_of(relay, "dept-2"), peer_of(relay, "dept-1")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            relay._tasks = nursery
            relay.link_event(asking, PacketsReceived(1, [ff.CatchUp(42_000, "dept-2"), deliver(6)]))
            relay.link_event(dept1, PacketsReceived(1, [deliver(20), deliver(21)]))
            await trio.testing.wait_all_tasks_blocked()
            assert ids(carol) == [20, 21] and relay._held_local is not None
            catch_up.go.set()
    assert ids(carol) == [20, 21, 5, 6]
    assert relay._held_local is None


async def test_the_masters_held_delivers_go_to_a_client_that_reads_paced_without_closing_it() -> None:
    # Five queues' worth held from the asking slave: released at once, carol's queue and the
    # backlog behind it (its bytes: 8 frames' each) overflowed and she was closed 4004 though
    # she read promptly. Now a frame at a time as her queue has room; what the slave sends
    # meanwhile comes after them.
    sending, receiving = trio.testing.lockstep_stream_one_way_pair()
    size = len(frame(1).payload(False))
    carol = Session("s-3", 2, "web", None, SendQueue(StreamSocket(sending), 8, 8 * size), trio.CancelScope(),
                    idle_timeout=60.0)
    catch_up = FakeCatchUp(carol, replayed=5)  # type: ignore[arg-type]
    relay = relay_with(catch_up, carol, [50_000])  # type: ignore[arg-type]
    asking = peer_of(relay, "dept-2")
    held = [deliver(n) for n in range(10, 50)]
    expected = [frame(5), *(frame(n) for n in range(10, 51))]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            carol.send_queue.attach(nursery, carol.cancel_scope)
            relay._tasks = nursery
            relay.link_event(asking, PacketsReceived(1, [ff.CatchUp(42_000, "dept-2"), *held]))
            catch_up.go.set()
            await trio.testing.wait_all_tasks_blocked()
            relay.link_event(asking, PacketsReceived(42, [deliver(50)]))  # while the release runs
            got = await read(receiving, len(wire(expected)))
            nursery.cancel_scope.cancel()
    assert carol.close_code is None
    assert got == wire(expected)
    assert relay._held_local is None
