"""A slave that died or restarted may have taken packets it never relayed (its senders' acked
messages): the master drops it and asks every other slave, with a `CatchUp` packet, and its
own sessions to re-deliver from the store what they may have missed since the slave's link
went down (node/forward_hub.py, node/forward_link.py, node/catch_up.py). Driven without
sockets: sessions record what they are pushed, a fake catch-up what it is asked; the last
tests' sessions have real send queues, over trio streams that a reader empties or nobody reads."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import TypeVar

import attrs
import pytest
import structlog.testing
import trio
import trio.testing

from vim_cluster.errors import CloseCode, StoreUnavailable
from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId
from vim_cluster.node import forward_hub
from vim_cluster.node.blocking import BlockingRunner
from vim_cluster.node.catch_up import CatchUp
from vim_cluster.node.catch_up import _room as room_in
from vim_cluster.node.delivery import deliver_body
from vim_cluster.node.forward_hub import MasterRelay, Peer
from vim_cluster.node.forward_link import SlaveLink
from vim_cluster.node.local_sessions import Session
from vim_cluster.node.send_queue import SendQueue
from vim_cluster.node.ws_server import frame as ws_frame
from vim_cluster.ports import NodeInfo
from vim_cluster.protocol import forward_frames as ff
from vim_cluster.protocol.codec import OutFrame
from vim_cluster.protocol.forward import PeerStream
from vim_cluster.protocol.forward_connection import (
    Acked,
    PacketsReceived,
    PeerAuthenticated,
    PeerIdle,
    PeerRole,
)
from vim_cluster.protocol.frames import MessageOut
from vim_cluster.tunables import DEFAULTS

from .test_delivery import RecordingSession, local_of

T = TypeVar("T")


class FakeCatchUp:
    """Records what it is asked; `run` pushes message `replayed` to `session` once `go` is set."""

    def __init__(self, session: RecordingSession, replayed: int = 0) -> None:
        self.session = session
        self.replayed = replayed
        self.missed: list[int] = []
        self.lost_calls = 0
        self.go = trio.Event()
        self.runs = 0
        self.running = self.most_at_once = 0
        self.last_failed = False  # never fails

    def lost(self) -> None:
        self.lost_calls += 1

    def missed_since(self, since_ms: int) -> None:
        self.missed.append(since_ms)

    async def run(self) -> int:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await self.go.wait()
            self.session.push(frame(self.replayed))
            self.runs += 1
            return 1
        finally:
            self.running -= 1

    async def run_until_done(self, failed: trio.Event | None = None) -> int:
        return await self.run()  # never fails


class OneAtATime(CatchUp):
    """A real CatchUp (its lock, its retries) whose delivery is `fake`'s run."""

    def __init__(self, fake: FakeCatchUp) -> None:
        super().__init__(self._deliver, clock_ms=lambda: 1_000, margin_ms=0)
        self.fake = fake

    async def _deliver(self, since: int) -> int:
        return await self.fake.run()

    def missed_since(self, since_ms: int) -> None:
        self.fake.missed_since(since_ms)
        super().missed_since(since_ms)


def frame(n: int) -> OutFrame:
    m = Message(MessageId(n), f"c{n}", UserId(1), 2, ChatType.FRIEND, MessageType.TEXT, "hi", None, 1_000)
    return OutFrame(MessageOut(m))


def deliver(n: int) -> ff.Deliver:
    body, message_id = deliver_body([frame(n)])
    return ff.Deliver("dept-2", [2], body, None, 1_000, message_id)


def ids(session: RecordingSession) -> list[int]:
    return [int(json.loads(f.encoded(False))["message"]["id"]) for f in session.got]


def slave_with(catch_up: FakeCatchUp, bob: RecordingSession) -> SlaveLink:
    return SlaveLink("dept-1", "ws://127.0.0.1:9/forward", b"s" * 32, local_of("dept-1", bob),
                     clock_ms=lambda: 1_000, catch_up=catch_up)


async def test_a_linked_slave_catches_up_before_any_packet_after_the_catch_up_packet() -> None:
    bob = RecordingSession("s-2", 2)
    catch_up = FakeCatchUp(bob, replayed=5)
    link = slave_with(catch_up, bob)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            link._tasks = nursery  # linked: the pump's nursery
            link.link_event(link.peer, PacketsReceived(1, [deliver(1), ff.CatchUp(777, "dept-2"), deliver(2)]))
            link.link_event(link.peer, PacketsReceived(4, [deliver(3)]))
            await trio.testing.wait_all_tasks_blocked()
            assert ids(bob) == [1], "a packet after the catch-up packet was delivered before the catch-up"
            assert catch_up.missed == [777]
            catch_up.go.set()
    assert ids(bob) == [1, 5, 2, 3]
    assert link.held is None


class KickedSession(RecordingSession):
    """A RecordingSession that records its kicks."""

    kicks: list[int]

    def __init__(self, session_id: str, user_id: int) -> None:
        super().__init__(session_id, user_id)
        self.kicks = []

    def kick(self, code: CloseCode, reason: str, frame: OutFrame | None = None) -> None:
        self.kicks.append(int(code))


async def test_kicks_and_presence_are_not_held_behind_a_catch_up() -> None:
    """A kick that comes during a catch-up (the user logged in again with the same client type
    elsewhere) closes the old session at once, not up to link_warmup_s later; messages still
    wait behind the catch-up."""
    bob = KickedSession("s-2", 2)
    catch_up = FakeCatchUp(bob, replayed=5)
    link = slave_with(catch_up, bob)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            link._tasks = nursery
            link.link_event(link.peer, PacketsReceived(1, [ff.CatchUp(777, "dept-2"), deliver(2)]))
            kick = ff.Kick("dept-1", 2, "s-2", int(CloseCode.OTHER_LOGIN), None)
            link.link_event(link.peer, PacketsReceived(3, [deliver(3), kick]))
            await trio.testing.wait_all_tasks_blocked()
            assert bob.kicks == [int(CloseCode.OTHER_LOGIN)] and ids(bob) == []
            catch_up.go.set()
    assert ids(bob) == [5, 2, 3]


async def test_an_unlinked_slave_notes_the_loss_for_its_next_link_up_and_delivers_on() -> None:
    bob = RecordingSession("s-2", 2)
    catch_up = FakeCatchUp(bob)
    link = slave_with(catch_up, bob)  # no pump nursery: the link is down (packets held at its end)
    link.link_event(link.peer, PacketsReceived(1, [ff.CatchUp(777, "dept-2"), deliver(2)]))
    assert ids(bob) == [2]
    assert catch_up.missed == [777] and catch_up.runs == 0


def relay_with(catch_up: FakeCatchUp | None, own: RecordingSession, now: list[int]) -> MasterRelay:
    return MasterRelay("master", b"s" * 32, local_of("master", own), registry=None,  # type: ignore[arg-type]
                       redis=BlockingRunner("redis", 1), clock_ms=lambda: now[0], catch_up=catch_up)


def peer_of(relay: MasterRelay, node: str, role: PeerRole = PeerRole.SLAVE, instance: str = "i+catch-up") -> Peer:
    key = node if role is PeerRole.SLAVE else f"operator:{node}:i"
    peer = Peer(name=key, stream=PeerStream(), owner=relay, node_id=node, instance=instance, role=role)
    relay.peers[key] = peer
    return peer


def queued(peer: Peer) -> list[ff.Packet]:
    return [item.packet for item in peer.stream.window.items]


async def test_a_dropped_slave_makes_every_other_slave_and_the_master_catch_up_from_its_link_down() -> None:
    carol = RecordingSession("s-3", 3)
    catch_up = FakeCatchUp(carol, replayed=9)
    now = [50_000]
    relay = relay_with(catch_up, carol, now)
    gone, dept1, standby = peer_of(relay, "dept-2"), peer_of(relay, "dept-1"), peer_of(relay, "standby")
    operator = peer_of(relay, "tool", PeerRole.OPERATOR)
    older = peer_of(relay, "dept-3", instance="0123456789abcdef")  # a node of an earlier release
    gone.down_at_ms = 42_000  # its link went down then; it is dropped later
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            relay._tasks = nursery  # serving
            relay.drop_peer("dept-2", "restarted (new instance)")
            assert "dept-2" not in relay.peers
            for peer in (dept1, standby):
                assert queued(peer) == [ff.CatchUp(42_000, "dept-2")]
            assert queued(operator) == [] and queued(older) == []
            assert catch_up.missed == [42_000]
            assert relay._catching_up and not relay._caught_up.is_set()  # a new link's pump waits
            catch_up.go.set()
    assert ids(carol) == [9] and not relay._catching_up and relay._caught_up.is_set()


async def test_a_slave_without_a_link_down_time_counts_from_now_and_an_operator_asks_nothing() -> None:
    carol = RecordingSession("s-3", 3)
    catch_up = FakeCatchUp(carol)
    now = [50_000]
    relay = relay_with(catch_up, carol, now)
    peer_of(relay, "tool", PeerRole.OPERATOR)
    dept1 = peer_of(relay, "dept-1")
    relay.drop_peer("operator:tool:i", "operator done")
    assert queued(dept1) == [] and catch_up.missed == []
    peer_of(relay, "dept-2")  # down_at_ms None: as if no link of it ever ended (defensive)
    relay.drop_peer("dept-2", "its lease lapsed in Redis")  # not serving: no run started here
    assert queued(dept1) == [ff.CatchUp(50_000, "dept-2")]
    assert catch_up.missed == [50_000] and not relay._catching_up


def test_a_slave_names_the_catch_up_feature_in_its_instance_and_an_older_one_names_none() -> None:
    link = slave_with(FakeCatchUp(RecordingSession("s-2", 2)), RecordingSession("s-2", 2))
    assert ff.features_of(link.instance) == {ff.CATCH_UP_FEATURE}
    without = SlaveLink("dept-1", "ws://127.0.0.1:9/forward", b"s" * 32, local_of("dept-1"), clock_ms=lambda: 1_000)
    assert ff.features_of(without.instance) == frozenset()  # it could not take the packet
    assert ff.features_of("0123456789abcdef") == frozenset()
    assert ff.features_of(ff.instance_with("ab", "x", "y")) == {"x", "y"}
    assert ff.instance_with("ab") == "ab"


async def test_a_new_link_waits_for_the_masters_own_catch_up_but_not_past_the_warm_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A slave admitted while the master's sessions catch up is pumped after it (order), but
    never held past link_warmup_s: it hears no beat meanwhile and would give its link up."""
    carol = RecordingSession("s-3", 3)
    catch_up = FakeCatchUp(carol)
    now = [50_000]
    relay = relay_with(catch_up, carol, now)
    peer_of(relay, "dept-2")
    with structlog.testing.capture_logs() as logs, trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            relay._tasks = nursery
            relay.drop_peer("dept-2", "restarted (new instance)")
            start = trio.current_time()
            await relay._own_catch_up_done(start + relay.tunables.link_warmup_s)  # it never ends here
            assert trio.current_time() - start == pytest.approx(relay.tunables.link_warmup_s)
            assert [e["event"] for e in logs if e["log_level"] == "warning"][-1] == "catch_up_slow"
            catch_up.go.set()
            await relay._own_catch_up_done(start)  # once it ended: at once, whatever the deadline
            assert trio.current_time() - start == pytest.approx(relay.tunables.link_warmup_s)
    assert ids(carol) == [0]


async def test_drops_during_the_masters_own_catch_up_run_it_again_after_never_beside_it() -> None:
    """Two runs at once would interleave their users' pages (a later `since` first)."""
    carol = RecordingSession("s-3", 3)
    catch_up = FakeCatchUp(carol)
    relay = relay_with(catch_up, carol, [50_000])
    for node in ("dept-2", "dept-3", "dept-4"):
        peer_of(relay, node)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            relay._tasks = nursery
            relay.drop_peer("dept-2", "restarted (new instance)")
            await trio.testing.wait_all_tasks_blocked()
            relay.drop_peer("dept-3", "restarted (new instance)")
            relay.drop_peer("dept-4", "its lease lapsed in Redis")
            catch_up.go.set()
    assert catch_up.runs == 2 and catch_up.most_at_once == 1  # once more for both later drops
    assert relay._caught_up.is_set()


def test_the_catch_up_reaches_back_to_the_earliest_link_down_of_a_slave_not_through_yet() -> None:
    """dept-3 is cut off (alive; it resends later) since before dept-2 went down: a catch-up
    from dept-2's time would give dept-3's newer messages first, its older ones after."""
    carol = RecordingSession("s-3", 3)
    relay = relay_with(FakeCatchUp(carol), carol, [50_000])
    gone, cut, dept1 = peer_of(relay, "dept-2"), peer_of(relay, "dept-3"), peer_of(relay, "dept-1")
    gone.down_at_ms, cut.down_at_ms = 42_000, 30_000
    relay.drop_peer("dept-2", "restarted (new instance)")
    assert queued(dept1) == [ff.CatchUp(30_000, "dept-2")]
    relay.link_event(cut, PeerIdle())  # dept-3 linked again and beat: its backlog is through
    assert cut.down_at_ms is None
    peer_of(relay, "dept-4").down_at_ms = 45_000
    relay.drop_peer("dept-4", "its lease lapsed in Redis")
    assert queued(dept1)[-1] == ff.CatchUp(45_000, "dept-4")


def test_a_relinked_slave_counts_as_missing_packets_from_its_link_down_until_its_link_settles() -> None:
    """Relinked at 45 s after going down at 42 s, it may still be resending what it held:
    until its link has stayed up link_dead_after_s (or it beat), 42 s counts."""
    relay = relay_with(None, RecordingSession("s-3", 3), [50_000])
    peer = peer_of(relay, "dept-3")
    peer.down_at_ms, peer.linked_at_ms = 42_000, 45_000
    peer.connection = object()  # type: ignore[assignment]  # linked
    settle = relay.tunables.link_dead_after_s * 1000
    assert peer.missing_since(50_000, settle) == 42_000
    assert peer.missing_since(int(45_000 + settle), settle) is None
    peer.connection = None  # its link ended again at 50 s: still 42 s
    assert peer.missing_since(50_000, settle) == 42_000


async def test_a_slow_catch_up_holds_live_packets_link_warmup_s_at_most_and_runs_one_at_a_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A slow store must not stop live delivery on every slave: past link_warmup_s the held
    packets go out; a second CatchUp's run waits for the first (never two interleaved: the
    real CatchUp's lock, which `OneAtATime` puts around the fake)."""
    bob = RecordingSession("s-2", 2)
    catch_up = FakeCatchUp(bob, replayed=5)
    link = slave_with(catch_up, bob)
    link.catch_up = OneAtATime(catch_up)
    with structlog.testing.capture_logs() as logs, trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            link._tasks = nursery
            link.link_event(link.peer, PacketsReceived(1, [ff.CatchUp(777, "dept-2"), deliver(2)]))
            await trio.sleep(link.tunables.link_warmup_s - 0.1)
            assert ids(bob) == []
            await trio.sleep(0.2)
            assert ids(bob) == [2] and link.held is None  # delivered beside the running catch-up
            assert "catch_up_slow" in [e["event"] for e in logs]
            link.link_event(link.peer, PacketsReceived(3, [ff.CatchUp(888, "dept-3"), deliver(3)]))
            await trio.sleep(link.tunables.link_warmup_s + 1)
            assert ids(bob) == [2, 3] and catch_up.running == 1  # the second waits for the first
            catch_up.go.set()
    assert catch_up.runs == 2 and catch_up.most_at_once == 1
    assert ids(bob) == [2, 3, 5, 5]


def test_a_link_too_short_to_bring_its_backlog_keeps_the_earlier_down_time() -> None:
    """Peer.link_ended: a link up under link_dead_after_s (reading from its pump's start, after
    its admission's waits) may not have brought what the slave held; a longer one, or a beat,
    did."""
    relay = relay_with(None, RecordingSession("s-3", 3), [0])
    settle = relay.tunables.link_dead_after_s * 1000
    peer = peer_of(relay, "dept-3")
    peer.connection = object()  # type: ignore[assignment]
    peer.pumping(10_000)
    peer.link_ended(12_000, settle)
    assert peer.down_at_ms == 12_000  # its first link: from its end
    peer.pumping(20_000)  # relinked, resending
    peer.link_ended(25_000, settle)
    assert peer.down_at_ms == 12_000  # too short: the earlier time stands
    peer.pumping(30_000)
    peer.link_ended(int(30_000 + settle), settle)
    assert peer.down_at_ms == 30_000 + settle  # long enough: from its end
    peer.pumping(50_000)
    relay.link_event(peer, PeerIdle())  # it beat: all it held came
    peer.link_ended(51_000, settle)
    assert peer.down_at_ms == 51_000


def test_another_slaves_older_link_down_reaches_back_one_catch_up_margin_at_most() -> None:
    """A slave cut off for hours (or never reaped) must not make every catch-up re-send hours."""
    carol = RecordingSession("s-3", 3)
    relay = relay_with(None, carol, [500_000])
    gone, cut, dept1 = peer_of(relay, "dept-2"), peer_of(relay, "dept-3"), peer_of(relay, "dept-1")
    gone.down_at_ms, cut.down_at_ms = 400_000, 30_000
    relay.drop_peer("dept-2", "restarted (new instance)")
    assert queued(dept1) == [ff.CatchUp(400_000 - relay.tunables.catch_up_margin_ms, "dept-2")]


async def test_a_drop_as_serving_ends_leaves_the_catch_up_for_the_next_serve() -> None:
    """The reaper may drop a peer after the serving nursery closed but before `_tasks` was
    cleared: no crash; the loss is noted for the catch-up that runs before serving again."""
    carol = RecordingSession("s-3", 3)
    catch_up = FakeCatchUp(carol)
    relay = relay_with(catch_up, carol, [50_000])
    peer_of(relay, "dept-2").down_at_ms = 42_000
    async with trio.open_nursery() as closed:
        pass
    relay._tasks = closed
    relay.drop_peer("dept-2", "its lease lapsed in Redis")
    assert catch_up.missed == [42_000] and catch_up.runs == 0
    assert not relay._catching_up and relay._caught_up.is_set()



def flaky_catch_up(session: RecordingSession, failing: int) -> CatchUp:
    """A real CatchUp whose store fails its first `failing` runs, then re-delivers message 5."""
    tries: list[int] = []

    async def deliver_since(since: int) -> int:
        tries.append(since)
        if len(tries) <= failing:
            raise StoreUnavailable("store down")
        session.push(frame(5))
        return 1

    return CatchUp(deliver_since, clock_ms=lambda: 1_000, margin_ms=0)


async def test_a_failed_catch_up_lets_the_held_packets_go_and_is_tried_again_while_linked(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A store that does not answer delivers nothing before the held packets: they go out at
    its first failure, not after link_warmup_s; the catch-up comes once the store answers,
    after them (nothing lost; its order gives way)."""
    bob = RecordingSession("s-2", 2)
    catch_up = flaky_catch_up(bob, failing=2)
    link = slave_with(FakeCatchUp(bob), bob)
    link.catch_up = catch_up
    with structlog.testing.capture_logs() as logs, trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            link._tasks = nursery
            link.link_event(link.peer, PacketsReceived(1, [ff.CatchUp(777, "dept-2"), deliver(2)]))
            await trio.sleep(0.1)
            assert ids(bob) == [2] and link.held is None
            assert catch_up.failures == 1
    assert ids(bob) == [2, 5] and catch_up.failures == 2 and catch_up.down_since is None
    assert "catch_up_slow" not in [e["event"] for e in logs]
    assert [e["event"] for e in logs].count("catch_up_failed") == 2


async def test_the_masters_failed_catch_up_frees_new_links_and_is_tried_again_beside_serving(
    autojump_clock: trio.abc.Clock,
) -> None:
    """As for a slave: a new link's pump waits for the master's own catch-up until it is
    delivered or has failed once. A run before serving that failed (roles.py) is tried again
    once the relay serves."""
    carol = RecordingSession("s-3", 3)
    catch_up = flaky_catch_up(carol, failing=2)
    relay = relay_with(None, carol, [50_000])
    relay.catch_up = catch_up
    peer_of(relay, "dept-2").down_at_ms = 42_000
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            relay._tasks = nursery
            relay.drop_peer("dept-2", "restarted (new instance)")
            start = trio.current_time()
            await relay._own_catch_up_done(start + relay.tunables.link_warmup_s)
            assert trio.current_time() == start and ids(carol) == []  # its first failure freed it
    assert ids(carol) == [5] and catch_up.failures == 2 and not relay._catching_up

    before_serving = flaky_catch_up(carol, failing=1)
    relay.catch_up = before_serving
    before_serving.down_since = 40_000  # a pause of the relay (roles.py notes it lost)
    await before_serving.run()  # roles.py's run before serving: failed
    assert before_serving.last_failed
    relay.registry = Registry({})  # type: ignore[assignment]  # the warm-up expects no slave
    relay.redis = Inline()  # type: ignore[assignment]  # no thread: the autojump clock would jump past it
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.serve, listeners)
            await relay._caught_up.wait()
            nursery.cancel_scope.cancel()
    assert ids(carol) == [5, 5] and before_serving.down_since is None and not before_serving.last_failed


def test_a_slave_whose_last_packet_said_it_leaves_is_dropped_without_a_catch_up() -> None:
    """A Leaving packet (a slave that stops with everything it will send queued before it)
    spares every node the catch-up its drop would ask for; it counts only while nothing came
    after it, and only from a slave."""
    carol = RecordingSession("s-3", 3)
    catch_up = FakeCatchUp(carol)
    relay = relay_with(catch_up, carol, [50_000])
    assert ff.LEAVING_FEATURE in ff.features_of(relay.instance)  # slaves send it only to such a master
    leaving, dept1 = peer_of(relay, "dept-2"), peer_of(relay, "dept-1")
    leaving.down_at_ms = 42_000
    relay.link_event(leaving, PacketsReceived(1, [ff.SessionClose(2, "s-2"), ff.Leaving("dept-2")]))
    assert leaving.left and leaving.ack_now  # the slave waits for this ack before it stops
    assert leaving.missing_since(50_000, 10_000) is None  # it holds nothing: no reach back for others
    with structlog.testing.capture_logs() as logs:
        relay.drop_peer("dept-2", "its lease lapsed in Redis")  # released, in fact: said so, not warned
    assert queued(dept1) == [] and catch_up.missed == []
    assert "forward_peer_dropped" not in [e["event"] for e in logs]  # an info line (the tests log warnings)

    more = peer_of(relay, "dept-3")
    relay.link_event(more, PacketsReceived(1, [ff.Leaving("dept-3"), ff.SessionClose(3, "s-9")]))
    assert not more.left  # it may hold more after it
    relay.drop_peer("dept-3", "restarted (new instance)")
    assert queued(dept1) == [ff.CatchUp(50_000, "dept-3")] and catch_up.missed == [50_000]

    operator = peer_of(relay, "tool", PeerRole.OPERATOR)
    relay.link_event(operator, PacketsReceived(1, [ff.Leaving("tool")]))
    assert not operator.left and relay.refused_packets == 1


class LinkedTo:
    """What `SlaveLink.leave` reads of its open connection: the master's instance."""

    def __init__(self, instance: str) -> None:
        self.peer_instance = instance


async def test_a_stopping_slave_says_it_leaves_only_to_a_master_that_takes_it_and_waits_for_the_ack() -> None:
    bob = RecordingSession("s-2", 2)
    link = slave_with(FakeCatchUp(bob), bob)
    assert not await link.leave()  # not linked: nothing to tell
    link.connected = True
    link.conn = LinkedTo("0123456789abcdef")  # type: ignore[assignment]  # a master of an earlier release
    assert not await link.leave() and len(link.peer) == 0  # it would drop the link over the packet
    link.conn = LinkedTo(ff.instance_with("0123456789abcdef", ff.LEAVING_FEATURE))  # type: ignore[assignment]
    link.deliver([3], [frame(7)], None)  # queued before: acked before it
    left: list[bool] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _append(left, link.leave()))
            await trio.testing.wait_all_tasks_blocked()
            window = link.peer.stream.window
            assert [item.packet.kind for item in window.items] == [ff.DELIVER, ff.LEAVING]
            first, sent = window.take_batch(10)
            link.link_event(link.peer, Acked(window.ack(first)))  # the Deliver only
            await trio.testing.wait_all_tasks_blocked()
            assert left == []
            link.link_event(link.peer, Acked(window.ack(first + 1)))
    assert left == [True] and len(link.peer) == 0


async def test_a_leave_whose_link_ends_before_the_ack_gives_up_and_sends_it_to_no_other_master() -> None:
    """The node stops right after `leave` returns: a Leaving still unacked is never resent to
    the next master (which might be of an earlier release, and drop the link over it)."""
    bob = RecordingSession("s-2", 2)
    link = slave_with(FakeCatchUp(bob), bob)
    link.connected = True
    link.conn = LinkedTo(ff.instance_with("0123456789abcdef", ff.LEAVING_FEATURE))  # type: ignore[assignment]
    left: list[bool] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _append(left, link.leave()))
            await trio.testing.wait_all_tasks_blocked()
            link._link_down()
    assert left == [False] and not link.connected and len(link.peer) == 1


async def _append(into: list[bool], result: Awaitable[bool]) -> None:
    into.append(await result)


class Inline:
    """A BlockingRunner that calls in the event loop's thread."""

    async def __call__(self, fn: Callable[..., T], *args: object) -> T:
        return fn(*args)


class Registry:
    """The Redis registry calls the relay makes here: lease owners and the node list."""

    def __init__(self, owners: dict[str, str]) -> None:
        self.owners = owners

    def node_owner(self, node_id: str) -> str | None:
        return self.owners.get(node_id)

    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(node, "slave", "", None, None, 1, "v", 0, 0, 0, alive=node in self.owners)
                for node in ("dept-1", "dept-2", "dept-3")]

    def purge_routes(self, node_id: str) -> int:
        return 0


def authenticated(node: str, instance: str) -> PeerAuthenticated:
    return PeerAuthenticated(node, PeerRole.SLAVE, ff.instance_with(instance, ff.CATCH_UP_FEATURE), 0, 0, 0, [])


async def test_a_slave_unlinked_when_the_master_started_that_dies_or_restarts_before_linking_is_caught_up_for(
) -> None:
    """A new master never knew the processes of slaves that had not linked to it yet: one of
    them may hold its senders' acked messages (its link went down with the old master). A
    stand-in peer remembers its lease owner: if it dies (its lease lapses) or restarts (it links
    under another owner) before linking, every node catches up from the relay's start; if the
    same process links, nothing is asked. A stand-in takes no packets meanwhile."""
    carol = RecordingSession("s-3", 3)
    catch_up = FakeCatchUp(carol)
    now = [50_000]
    relay = relay_with(catch_up, carol, now)
    relay.started_ms = 50_000  # the warm-up sets it
    registry = Registry({"dept-1": "h/1/a", "dept-2": "h/2/b", "dept-3": "h/3/c"})
    relay.registry = registry  # type: ignore[assignment]
    dept1 = peer_of(relay, "dept-1")
    dept1.connection = object()  # type: ignore[assignment]  # linked already
    with trio.fail_after(10):
        await relay._stand_in_for_unlinked({"dept-1", "dept-2", "dept-3"})
    assert sorted(relay.peers) == ["dept-1", "dept-2", "dept-3"] and relay.peers["dept-1"] is dept1
    assert relay.peers["dept-2"].stand_in_for == "h/2/b" and relay.peers["dept-2"].down_at_ms == 50_000
    assert relay._linked_slaves() == {"dept-1"}
    relay.kick("dept-2", 7, None, CloseCode.KICKED, None)
    relay.routes.add(9, "s-9", "master")  # a presence change to announce
    assert relay.publish_presence() == 1 and len(dept1) == 1
    assert len(relay.peers["dept-2"]) == 0  # no packet for a stand-in

    now[0] = 60_000  # dept-2's process died before it linked: its lease lapses
    del registry.owners["dept-2"]
    with trio.fail_after(10):
        await relay.reap_dead()
    assert "dept-2" not in relay.peers
    assert queued(dept1)[-1] == ff.CatchUp(50_000, "dept-2") and catch_up.missed == [50_000]

    with trio.fail_after(10):  # dept-3's process links: the same owner, nothing asked
        held_since = await relay._replace_stand_in(authenticated("dept-3", "i3"))
    peer = relay._peer_for(authenticated("dept-3", "i3"))
    assert peer.stand_in_for is None and peer.instance.startswith("i3") and catch_up.missed == [50_000]
    assert held_since == 50_000  # its peer keeps it (`_admit`) until its link brought what it held

    relay.peers["dept-3"] = relay._unknown_slave("dept-3", 50_000, stand_in_for="h/3/c")
    registry.owners["dept-3"] = "h/3/d"  # restarted: another lease owner links
    with trio.fail_after(10):
        await relay._replace_stand_in(authenticated("dept-3", "i4"))
    assert "dept-3" not in relay.peers
    assert queued(dept1)[-1] == ff.CatchUp(50_000, "dept-3") and catch_up.missed == [50_000, 50_000]


async def test_a_dead_slave_whose_routes_were_left_that_the_relay_never_knew_is_caught_up_for() -> None:
    """No stand-in for it (it died before the warm-up looked, or Redis did not answer then):
    its routes left in Redis say it did not stop cleanly, so every node catches up, once, and
    only within catch_up_margin_ms of the relay's start."""
    carol = RecordingSession("s-3", 3)
    catch_up = FakeCatchUp(carol)
    relay = relay_with(catch_up, carol, [50_000])
    relay.started_ms = 45_000
    registry = Registry({"dept-1": "h/1/a"})  # dept-2 and dept-3 are dead
    left = {"dept-2": 2, "dept-3": 1}
    registry.purge_routes = lambda node_id: left.pop(node_id, 0)  # type: ignore[method-assign]
    relay.registry = registry  # type: ignore[assignment]
    dept1 = peer_of(relay, "dept-1")
    dept1.connection = object()  # type: ignore[assignment]
    known = peer_of(relay, "dept-3")  # known, unlinked: dropped by the reaper, one catch-up
    known.down_at_ms = 44_000
    with trio.fail_after(10):
        await relay.reap_dead()
        await relay.reap_dead()  # its routes are gone now: nothing more
    assert queued(dept1) == [ff.CatchUp(44_000, "dept-3"), ff.CatchUp(45_000, "dept-2")]
    relay.started_ms = 50_000 - relay.tunables.catch_up_margin_ms - 1  # a relay up for longer:
    left["dept-2"] = 1  # one that never linked to it was cut off long before; nothing asked
    with trio.fail_after(10):
        await relay.reap_dead()
    assert len(queued(dept1)) == 2 and catch_up.missed == [44_000, 45_000]


class Beating(Registry):
    """The registry, with each node's last heartbeat time as its registration says."""

    def __init__(self, owners: dict[str, str]) -> None:
        super().__init__(owners)
        self.beats = dict.fromkeys(owners, 0)

    def nodes(self) -> list[NodeInfo]:
        return [attrs.evolve(n, heartbeat_at=self.beats[n.node_id]) for n in super().nodes()]

    def beat(self, at: int) -> None:
        self.beats.update((node, at) for node in self.owners)


async def test_a_slave_whose_lease_was_released_is_said_to_have_stopped_not_to_have_lapsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reaper drops a slave whose lock is gone from Redis. A clean stop releases it (a
    restart: the next process takes it a second later), a dead process lets it lapse, and Redis
    shows both alike; but a lock renewed less than lease_ttl_s ago cannot have lapsed
    (core/lease.py `LeaseSightings`). The operator's walkthrough: the master restarted with a
    new secret, then dept-2 (refused, unlinked) restarted cleanly, and the master warned that
    its lease lapsed. The catch-up is asked all the same (it could not say it left)."""
    captured = structlog.testing.LogCapture()  # info lines too (the tests' own config drops them)
    monkeypatch.setattr(forward_hub, "log", structlog.wrap_logger(
        None, processors=[captured], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)))
    carol = RecordingSession("s-3", 3)
    catch_up = FakeCatchUp(carol)
    now = [50_000]
    relay = relay_with(catch_up, carol, now)
    relay.started_ms = 50_000
    registry = Beating({"dept-1": "h/1/a", "dept-2": "h/2/b", "dept-3": "h/3/c"})
    relay.registry = registry  # type: ignore[assignment]
    relay.redis = Inline()  # type: ignore[assignment]
    dept1 = peer_of(relay, "dept-1")
    dept1.connection = object()  # type: ignore[assignment]
    relay.peers["dept-2"] = relay._unknown_slave("dept-2", 50_000, stand_in_for="h/2/b")
    peer_of(relay, "dept-3").down_at_ms = 50_000  # linked once; its link is down, no Leaving came
    with trio.fail_after(10):
        await relay.reap_dead()  # the first read: when they beat is not known yet
        now[0] = 52_000
        registry.beat(51_500)
        await relay.reap_dead()  # both renewed their locks since the last read
        now[0] = 54_000
        del registry.owners["dept-2"], registry.owners["dept-3"]  # released: clean stops
        captured.entries.clear()
        await relay.reap_dead()
        assert sorted((e["peer"], e["log_level"], e["why"]) for e in captured.entries if e["event"] == "forward_peer_dropped") == [

            ("dept-2", "info", "it stopped before it linked to this master (its lease released, not lapsed)"),
            ("dept-3", "info", "it stopped (its lease released, not lapsed)")]
        assert queued(dept1)[-2:] == [ff.CatchUp(50_000, "dept-2"), ff.CatchUp(50_000, "dept-3")]  # asked all the same

        peer_of(relay, "dept-3")  # started again; then its process hangs: no more beats
        registry.owners["dept-3"] = "h/3/d"
        registry.beat(55_000)
        now[0] = 56_000
        await relay.reap_dead()  # renewed after the read at 54 s: held until 64 s at least
        del registry.owners["dept-3"]  # lapsed
        now[0] = 66_000
        captured.entries.clear()
        await relay.reap_dead()
        assert [(e["log_level"], e["why"]) for e in captured.entries if e["event"] == "forward_peer_dropped"] == [
            ("warning", "its lease lapsed in Redis")]


class StreamSocket:
    """What a SendQueue writes to, over a trio stream: frames as they are, no close frame."""

    def __init__(self, stream: trio.abc.SendStream) -> None:
        self.stream = stream

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def close_frame(self, code: int, reason: str) -> bytes:
        return b""


class NothingMissed:
    """A catch-up that has nothing to deliver."""

    last_failed = False

    def lost(self) -> None:
        return None

    def missed_since(self, since_ms: int) -> None:
        return None

    async def run(self) -> int:
        return 0

    async def run_until_done(self, failed: trio.Event | None = None) -> int:
        return 0


def bob_over(stream: trio.abc.SendStream, limit: int, idle_timeout: float = 60.0) -> Session:
    """bob (user 2), whose send queue of `limit` frames writes to `stream` (its writer task only)."""
    return Session("s-2", 2, "web", None, SendQueue(StreamSocket(stream), limit), trio.CancelScope(),
                   idle_timeout=idle_timeout)


def wire(*packets: ff.Deliver) -> bytes:
    """What a text client reads of these packets' frames."""
    return b"".join(ws_frame(text, False) for p in packets
                    for text in ([p.frame] if isinstance(p.frame, bytes) else p.frame))


def delivers(first: int, last: int) -> ff.Deliver:
    """One packet of several frames (a slave joins a sender's messages to one user)."""
    body, message_id = deliver_body([frame(n) for n in range(first, last + 1)])
    return ff.Deliver("dept-2", [2], body, None, 1_000, message_id)


async def test_packets_held_during_a_catch_up_go_to_a_client_that_reads_without_closing_it() -> None:
    # Five send queues' worth held, released in one go: before, bob was closed 4004 at the
    # 9th frame though he read everything at once (after a master outage: a wave of 4004s).
    # A packet of more frames than his queue holds goes a frame at a time.
    sending, receiving = trio.testing.lockstep_stream_one_way_pair()  # bob reads what he is sent, promptly
    bob = bob_over(sending, limit=8)
    link = SlaveLink("dept-1", "ws://127.0.0.1:9/forward", b"s" * 32, local_of("dept-1", bob),  # type: ignore[arg-type]
                     clock_ms=lambda: 1_000, catch_up=NothingMissed())
    held = [deliver(n) for n in range(1, 21)] + [delivers(21, 40)]
    later = deliver(41)
    got = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bob.send_queue.attach(nursery, bob.cancel_scope)
            link._tasks = nursery  # linked: the pump's nursery
            link.held = []  # the link came up: packets wait for its catch-up
            link.link_event(link.peer, PacketsReceived(1, held))
            nursery.start_soon(link._catch_up_then_release)
            await trio.testing.wait_all_tasks_blocked()
            link.link_event(link.peer, PacketsReceived(41, [later]))  # comes while the release runs
            while len(got) < len(wire(*held, later)):
                got += await receiving.receive_some()
            nursery.cancel_scope.cancel()
    assert bob.close_code is None
    assert bytes(got) == wire(*held, later)  # every frame, in order, the later packet last
    assert link.held is None


async def test_packets_held_for_a_client_that_reads_nothing_close_it_4004_at_its_idle_timeout(autojump_clock) -> None:
    # bob never reads: the release waits for room in his queue link_warmup_s at most (live
    # delivery waits behind it), then delivers the rest at once: into his backlog, which waits
    # for him to read his idle timeout at most, then he is a slow consumer.
    sending, _ = trio.testing.lockstep_stream_one_way_pair()
    bob = bob_over(sending, limit=8, idle_timeout=60.0)
    link = SlaveLink("dept-1", "ws://127.0.0.1:9/forward", b"s" * 32, local_of("dept-1", bob),  # type: ignore[arg-type]
                     clock_ms=lambda: 1_000, catch_up=NothingMissed())
    async with trio.open_nursery() as nursery:
        bob.send_queue.attach(nursery, bob.cancel_scope)
        link._tasks = nursery
        link.held = [deliver(n) for n in range(1, 41)]
        started = trio.current_time()
        await link._catch_up_then_release()
        assert trio.current_time() - started >= DEFAULTS.link_warmup_s
        assert bob.close_code is None and bob.backlog and link.held is None
        await trio.sleep(59)  # autojump_clock: nothing read meanwhile
        assert bob.close_code is None
        await trio.sleep(2)
        assert bob.close_code is CloseCode.SLOW_CONSUMER and not bob.backlog
        nursery.cancel_scope.cancel()


async def test_a_catch_up_waits_for_room_the_idle_timeout_then_closes_a_session_that_reads_nothing(
        autojump_clock) -> None:
    sending, _ = trio.testing.lockstep_stream_one_way_pair()  # nobody reads
    bob = bob_over(sending, limit=2)
    ctx = SimpleNamespace(config=SimpleNamespace(websocket=SimpleNamespace(idle_timeout=60.0)))
    async with trio.open_nursery() as nursery:
        bob.send_queue.attach(nursery, bob.cancel_scope)
        started = trio.current_time()
        for n in range(1, 11):  # one in the writer's hands, two in the queue, then a wait
            await room_in(ctx, bob, frame(n))  # type: ignore[arg-type]
            bob.push(frame(n))
        assert trio.current_time() - started == pytest.approx(60.0)
        assert bob.close_code is CloseCode.SLOW_CONSUMER
        nursery.cancel_scope.cancel()
