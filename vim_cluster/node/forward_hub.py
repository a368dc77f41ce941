"""The master side of the forward channel: authenticates slaves and relays between nodes.

Rules:
- A slave proves it holds the cluster secret (HMAC over both nonces) and must be registered
  and alive in Redis. Until its proof checked out, a peer's frames are capped at
  PRE_AUTH_MAX_FRAME (its session list comes after the proof, in a `sessions` frame); a node id
  that already has a live link, or is the master's own, is refused. Operator tools (role
  operator) may send kicks only. The handshake and every refusal are ForwardConnection's
  (protocol/forward_connection.py); this module moves bytes and acts on its events.
- The master is an ordinary node for its own clients; it also keeps the route table (which
  node holds which user's sessions) from the slaves' reports.
- A packet from slave A is acknowledged to A only when every forward the master made of it was
  acknowledged by its destination (end to end), so a master restart loses nothing: A resends.
- A peer whose lease lapsed in Redis is dead: its queue is dropped (its users replay from the
  store when they reconnect elsewhere), its routes are forgotten here and purged in Redis. So
  is one whose lease was released (it stopped), which the reaper tells from a lapse by its
  heartbeats (core/lease.py `LeaseSightings`) only to log it truthfully, as info.
- A slave that died (its lease lapsed) or restarted (it links with a new instance) may have
  taken packets with it that it never relayed: its senders' messages, acked once stored. So
  when the master drops such a peer it asks every other slave (a `CatchUp` packet, ahead of
  anything it relays to them after; only slaves whose instance names the feature: an older one
  would drop its link over it) and its own sessions to re-deliver from the store what they may
  have missed since the peer's link went down (node/catch_up.py): since the earliest such time
  of it and of every slave whose packets may still be on their way (unlinked, or linked for
  less than link_dead_after_s without a beat: `Peer.missing_since`; at most
  catch_up_margin_ms before the dropped peer's own), so a slave that resends later brings only
  duplicates, not older messages after newer ones. One such catch-up runs at
  a time. A peer admitted meanwhile is pumped only once the master's own catch-up is delivered
  (within link_warmup_s), so a restarted slave's new messages come after its old ones on the
  master's sessions too. A catch-up the store fails frees the waiting peers and is tried again
  beside serving (`own_catch_up_again`; also for the run before serving, node/roles.py).
  A slave whose last packet was a Leaving (it stopped gracefully, everything relayed) is
  dropped without a catch-up (`Peer.left`). A live slave asks for the same catch-up with a
  CatchUp packet of its own when it emptied its queue past vim.cluster.forward-queue-bytes
  (node/forward_link.py): since its oldest emptied packet was queued; the other slaves get
  the CatchUp ahead of what it sends after, and the master's own sessions get its Delivers
  after the master's own catch-up (`_held_local`, link_warmup_s at most; the other slaves'
  go on at once), then as their send queues take them (link_warmup_s more at most), as a
  slave releases what it held during a catch-up.
- A master that starts never knew the processes of slaves that have not linked to it yet, and
  one of them may hold acked messages (unlinked since the old master went): the warm-up keeps a
  stand-in peer for each, with its lease owner (`_stand_in_for_unlinked`). A stand-in takes no
  packets; it is dropped like a known peer (its lease lapses, or the node links under another
  owner: `_replace_stand_in`), with the catch-up from the relay's start, or gives way to the
  peer of the process it stood in for.
- After the master starts, it relays nothing from slaves until every slave alive in Redis has
  linked (and so reported its sessions), for at most link_warmup_s (Tunables): a restarted master's route table
  is empty, and a slave's queued packets for users of a slave that has not linked yet would find
  no route and be acked as done, never reaching those users' open sessions.
- Fencing: every frame carries the master's epoch (`set_epoch` when it changes); a peer that
  knows a newer epoch is refused and reported (`newer_epoch`: another master took over).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import structlog
import trio
from trio_websocket import ConnectionClosed

from ..core import presence
from ..core.lease import LeaseSightings
from ..core.relay import RouteTable
from ..errors import CloseCode, StoreUnavailable
from ..ports import NodeInfo, Registry
from ..protocol import forward_frames as ff
from ..protocol.codec import OutFrame
from ..protocol.forward import PeerStream, Unacked
from ..protocol.forward_connection import (
    PRE_AUTH_MAX_FRAME,
    UNREGISTERED,
    Acked,
    Admit,
    EndReason,
    EpochRaised,
    Event,
    ForwardConnection,
    LinkEnded,
    LinkState,
    PacketsReceived,
    PeerAuthenticated,
    PeerIdle,
    PeerRole,
    Refuse,
)
from ..tunables import DEFAULTS, Tunables
from .admission import Admission
from .blocking import BlockingRunner
from .catch_up import CatchUpRun
from .delivery import LocalDelivery, deliver_body, kick_packet
from .forward_link import frame_by_frame
from .link import MessageWebSocket, PeerLink, Signal, exchange, pump
from .link_tally import LinkTally
from .listeners import Listeners
from .local_sessions import Session
from .ws_messages import MessageSocket
from .ws_server import Request, serve_websockets

log = structlog.get_logger()
Tag = tuple[str, str, int]  # (source peer, its instance, its seq): whom to ack when done
__all__ = ["MasterRelay", "Peer", "PRE_AUTH_MAX_FRAME"]


@attrs.define(eq=False, kw_only=True)
class Peer(PeerLink[Tag]):
    """A slave or operator as the master holds it; `name` is its key: the node id (an operator:
    operator:<node>:<instance>). Its link events go to the relay, which gets the Peer itself."""

    node_id: str
    instance: str
    role: PeerRole
    connection: MessageWebSocket | None = None
    conn: ForwardConnection[Tag] | None = None
    pump_done: trio.Event = attrs.Factory(trio.Event)
    # When its link ended, from when what it held may not have reached us (`missing_since`).
    down_at_ms: int | None = None
    linked_at_ms: int = 0  # when its current (or last) link started to be read
    # Its last packet was a Leaving: it stops with nothing unrelayed (no catch-up for it).
    left: bool = False
    # A stand-in for a slave alive in Redis when this relay started that has not linked to it
    # since: the owner token of its lease then (its process). See `_stand_in_for_unlinked`.
    stand_in_for: str | None = None

    def pumping(self, now: int) -> None:
        """Its link is read from now on (after the waits of its admission)."""
        self.linked_at_ms = now

    def link_ended(self, now: int, settle_ms: float) -> None:
        """Its link ends (call while `connection` is still set): from now on what it holds may
        be missing, or from its earlier time if this link was too short to bring it all."""
        earlier = self.missing_since(now, settle_ms)
        self.down_at_ms = now if earlier is None else earlier

    def missing_since(self, now: int, settle_ms: float) -> int | None:
        """From when packets it held may not have reached us; None: none may be missing. A
        link that stayed up `settle_ms` (link_dead_after_s), or on which it beat (PeerIdle:
        `down_at_ms` cleared), is taken to have brought whatever it held before; so is one whose
        last packet said it leaves (`left`)."""
        if self.left or self.down_at_ms is None or (self.connection is not None and now - self.linked_at_ms >= settle_ms):
            return None
        return self.down_at_ms


class MasterRelay:
    def __init__(self, node_id: str, secret: bytes, local: LocalDelivery, registry: Registry,
                 redis: BlockingRunner, clock_ms: Callable[[], int], *, epoch: int = 0,
                 watch: Callable[[Event], None] = lambda event: None, tunables: Tunables = DEFAULTS,
                 catch_up: CatchUpRun | None = None, admission: Admission | None = None) -> None:
        self.node_id = node_id
        self.admission = admission  # the forward port's cap of unauthenticated connections per address
        self.catch_up = catch_up  # the node's own sessions' (see the module's rules)
        self._catching_up = False  # the node's own sessions' catch-up runs
        self._again = False  # and must run again: another peer was dropped meanwhile
        self._caught_up = trio.Event()  # set while it does not run
        self._caught_up.set()
        self._tasks: trio.Nursery | None = None  # while serving: where they run
        # The Delivers for the own sessions of the slaves that asked for a catch-up
        # (`_held_from`), from their CatchUp on, while it runs and they are released
        self._held_local: list[ff.Packet] | None = None
        self._held_from: set[str] = set()
        self.tunables = tunables
        self.tally = LinkTally(watch, far_end="peer")  # watch: the master lease
        self.secret = secret
        self.local = local
        self.registry = registry
        self.redis = redis
        self.clock_ms = clock_ms
        self.epoch = epoch  # this master's fencing epoch
        self.instance = ff.instance_with(secrets.token_hex(8), ff.LEAVING_FEATURE, ff.CATCH_UP_FEATURE)
        self.routes = RouteTable()
        self.sightings = LeaseSightings(tunables.lease_ttl_s * 1000)  # the reaper's: lapsed or released
        self.board = presence.PresenceBoard()
        self.peers: dict[str, Peer] = {}
        self.warm = trio.Event()  # every slave alive in Redis has linked since we started
        self.started_ms = clock_ms()  # when serving (last) started: the warm-up sets it
        self._linked = Signal()  # a slave linked (the warm-up checks again)
        self.newer_epoch: int | None = None  # the newest epoch a peer told of, if newer than ours
        self.refused_packets = 0  # packets a peer may not send (a slave's Presence, an operator's Deliver)

    def set_epoch(self, epoch: int) -> None:
        """This master's epoch changed (it took the lease again): frames carry it from now on."""
        self.epoch = epoch
        for peer in self.peers.values():
            if peer.conn is not None:
                peer.conn.set_epoch(epoch)

    # --- ClusterLink (the master's own traffic) -----------------------------------------

    def deliver(self, users: list[int], frames: Sequence[OutFrame], exclude: str | None) -> None:
        plan = self.routes.plan(users, skip=self.node_id)
        if plan:
            self._forward(plan, *deliver_body(frames), exclude, self.node_id, self.clock_ms(), tag=None)

    def kick(self, dst: str, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> None:
        self._send_kick(kick_packet(dst, user, session, code, notice), None)

    def session_opened(self, session: Session) -> None:
        self.routes.add(session.user_id, session.id, self.node_id)

    def session_closed(self, session: Session) -> None:
        self.routes.remove(session.user_id, session.id)

    async def routed(self, session: Session) -> None:
        return None  # the master delivers every relayed packet to its own sessions

    def queue_depth(self) -> int:
        return sum(len(p) for p in self.peers.values())

    def healthy(self) -> bool:
        return True

    # --- relaying -----------------------------------------------------------------------

    def _forward(self, plan: dict[str, list[int]], frame: bytes | list[bytes], message_id: int | None, exclude: str | None,
                 src: str, ts: int, tag: Tag | None) -> int:
        forwards = 0
        for node, users in plan.items():
            peer = self.peers.get(node)
            if peer is None or node == self.node_id or peer.stand_in_for is not None:
                continue
            peer.push(ff.Deliver(src, users, frame, exclude, ts, message_id), tag)
            forwards += 1
        return forwards

    def _send_kick(self, kick: ff.Kick, tag: Tag | None) -> int:
        if kick.dst == self.node_id:
            self.local.apply_kick(kick.user, kick.session, kick.code, kick.notice)
            return 0
        peer = self.peers.get(kick.dst)
        if peer is None or peer.stand_in_for is not None:  # a stand-in's node has no session routed here
            return 0
        peer.push(kick, tag)
        return 1

    def link_event(self, peer: PeerLink[Any], event: Event) -> None:
        if isinstance(event, PacketsReceived):
            assert isinstance(peer, Peer)
            self._on_packets(peer, event.first, event.packets)
        elif isinstance(event, Acked):
            self._complete(event.items)
        elif isinstance(event, PeerIdle):
            assert isinstance(peer, Peer)
            peer.down_at_ms = None  # its backlog, if any, is through
        else:
            self._note(event)

    def _note(self, event: Event) -> None:
        """Events about the link itself (handshake, fencing, its end): counted and logged."""
        self.tally.note(event)
        if isinstance(event, EpochRaised):
            self.newer_epoch = max(self.newer_epoch or 0, event.new)
            log.warning("forward_newer_epoch", peer=event.peer, epoch=self.epoch, newer=event.new)

    def _on_packets(self, peer: Peer, first: int, packets: Sequence[ff.Packet]) -> None:
        stream = peer.stream
        slave = peer.role is PeerRole.SLAVE
        now = self.clock_ms()
        for seq, packet in enumerate(packets, start=first):
            tag: Tag = (peer.name, peer.instance, seq)
            forwards = 0
            if slave:  # a Leaving counts only while nothing comes after it
                peer.left = isinstance(packet, ff.Leaving)
            if isinstance(packet, ff.Deliver) and slave:
                if self._held_local is None or peer.node_id not in self._held_from:
                    self.local.apply_deliver(packet.users, packet.frame, packet.message_id, packet.exclude,
                                             packet.ts, now)
                else:
                    self._held_local.append(packet)
                plan = self.routes.plan(packet.users, skip=peer.node_id)
                if plan:
                    forwards = self._forward(plan, packet.frame, packet.message_id, packet.exclude, packet.src,
                                             packet.ts, tag)
            elif isinstance(packet, ff.Kick):
                forwards = self._send_kick(packet, tag)
            elif isinstance(packet, ff.SessionOpen) and slave:
                self.routes.add(packet.user, packet.session, peer.node_id)
                peer.ack_now = True  # the session's offline replay waits for this ack
            elif isinstance(packet, ff.SessionClose) and slave:
                self.routes.remove(packet.user, packet.session)
            elif isinstance(packet, ff.CatchUp) and slave:
                self._slave_emptied(peer, packet)
            elif isinstance(packet, ff.Leaving) and slave:
                log.info("forward_peer_leaving", peer=peer.name)
                peer.ack_now = True  # it waits for this ack before it stops
            else:
                self.refused_packets += 1
                log.warning("forward_packet_refused", peer=peer.name, role=peer.role.value,
                            packet=type(packet).__name__)
            stream.hold(seq, forwards)

    def _complete(self, items: list[Unacked[Tag]]) -> None:
        touched: set[str] = set()
        for item in items:
            if item.tag is None:
                continue
            key, instance, seq = item.tag
            source = self.peers.get(key)
            if source is not None and source.instance == instance:
                source.stream.forward_done(seq)
                touched.add(key)
        for key in touched:
            self.peers[key].wake.set()  # its ack may have moved

    # --- presence (see core/presence.py) ---------------------------------------------------

    def publish_presence(self) -> int:
        """Announces the net presence changes since the last call to every session in the
        cluster: local sessions directly, each slave's in one `presence` packet."""
        changes = self.board.changes(self.routes.take_touched(), self.routes.node_of)
        if not changes:
            return 0
        self.local.presence_local(changes)
        packet = ff.Presence([(c.user, c.online, c.node) for c in changes])
        for peer in self.peers.values():
            if peer.role is PeerRole.SLAVE and peer.stand_in_for is None:
                peer.push(packet, None)
        return len(changes)

    async def run_presence(self) -> None:
        while True:
            await trio.sleep(self.tunables.presence_window_s)
            self.publish_presence()

    def drop_peer(self, key: str, why: str, *, stopped: bool = False) -> None:
        """Forget a dead or restarted peer: its queue, its routes. `stopped`: it stopped
        cleanly (its lease was released), which is logged as info, not as a warning."""
        peer = self.peers.pop(key, None)
        if peer is None:
            return
        dropped = peer.stream.window.drain()
        self._complete(dropped)
        sessions = self.routes.drop_node(key)
        if peer.left:  # a clean stop (its lease released, not lapsed): what is dropped was for its closed sessions
            log.info("forward_peer_dropped", peer=key, why="it stopped and left the cluster",
                     dropped_packets=len(dropped), sessions=sessions)
        else:
            (log.info if stopped else log.warning)("forward_peer_dropped", peer=key, why=why,
                                                   dropped_packets=len(dropped), sessions=sessions)
        if peer.role is PeerRole.SLAVE:
            self._catch_up_everywhere(peer)

    def _catch_up_everywhere(self, gone: Peer) -> None:
        """`gone` may have taken packets it never relayed: every other slave, and this node's
        own sessions, re-deliver what they may have missed since its link went down. Not
        when its last packet said it leaves: all it sent before has been relayed."""
        if gone.left:
            log.info("catch_up_not_needed", gone=gone.node_id, why="it left with everything relayed")
            return
        self.ask_catch_up(gone.down_at_ms if gone.down_at_ms is not None else self.clock_ms(), gone.node_id)

    def _slave_emptied(self, peer: Peer, packet: ff.CatchUp) -> None:
        """`peer` emptied its queue (see the module's rules): every node catches up, and the
        own sessions get what `peer` sends after it once theirs is delivered. Only `peer`'s:
        the catch-up brings the messages it dropped, which must come before its newer ones;
        another slave's come in their order whenever the catch-up brings them again (clients
        drop the copies by id)."""
        log.warning("forward_peer_emptied_queue", peer=peer.name, since_ms=packet.since)
        self.ask_catch_up(packet.since, peer.node_id, asking=peer)
        if not self._catching_up or self._tasks is None:
            return  # no catch-up of the own sessions runs: nothing to hold for
        if self._held_local is None:
            try:
                self._tasks.start_soon(self._release_local)
            except RuntimeError:  # its nursery closed (serving ended): nothing to hold for
                return
            self._held_local = []
        self._held_from.add(peer.node_id)

    async def _release_local(self) -> None:
        """Delivers the Delivers held for the own sessions once their catch-up is delivered,
        link_warmup_s at most (past it, a slow store: older messages may come after newer),
        then paced (`_release_paced`) link_warmup_s more at most, then the rest at once."""
        try:
            with trio.move_on_after(self.tunables.link_warmup_s) as waited:
                while not self._caught_up.is_set():  # one asked meanwhile runs again, or after it
                    await self._caught_up.wait()
            if waited.cancelled_caught:
                log.warning("catch_up_slow", held=len(self._held_local or ()), waited_s=self.tunables.link_warmup_s)
            with trio.move_on_after(self.tunables.link_warmup_s) as paced:
                await self._release_paced()
            if paced.cancelled_caught:
                log.warning("held_release_slow", held=len(self._held_local or ()),
                            waited_s=self.tunables.link_warmup_s)
        finally:
            held, self._held_local, self._held_from = self._held_local or [], None, set()
            now = self.clock_ms()
            for packet in held:
                assert isinstance(packet, ff.Deliver)
                self.local.apply_deliver(packet.users, packet.frame, packet.message_id, packet.exclude, packet.ts, now)

    async def _release_paced(self) -> None:
        """The held Delivers in order, as a slave releases what it held during a catch-up
        (SlaveLink._release_paced): a frame at a time, each once the send queues it goes to
        have room for it (LocalDelivery.room_for), while what the asking slaves send meanwhile
        is held behind them; each also after a catch-up of the own sessions asked meanwhile
        (another slave emptied its queue). The caller bounds the wait."""
        while self._held_local:
            batch, self._held_local = frame_by_frame(self._held_local), []
            done = 0
            try:
                for packet in batch:
                    assert isinstance(packet, ff.Deliver)
                    while not self._caught_up.is_set():
                        await self._caught_up.wait()
                    await self.local.room_for(packet)
                    self.local.apply_deliver(packet.users, packet.frame, packet.message_id, packet.exclude,
                                             packet.ts, self.clock_ms())
                    done += 1
            finally:
                self._held_local = batch[done:] + (self._held_local or [])

    def ask_catch_up(self, own: int, node: str, asking: Peer | None = None) -> None:
        """Every slave but `asking`, and the own sessions, re-deliver what they may have missed
        since `own` (or earlier: below) because of slave `node`."""
        # A slave still unlinked (or resending) keeps what it holds and sends it later: a
        # catch-up from after its link went down would bring its newer messages before those.
        # Reaching back at most catch_up_margin_ms more: a slave cut off for hours (or one never
        # reaped) would otherwise make every catch-up re-send hours of group messages.
        now, settle = self.clock_ms(), self.tunables.link_dead_after_s * 1000
        held = [t for p in self.peers.values() if p.role is PeerRole.SLAVE and p is not asking
                and (t := p.missing_since(now, settle)) is not None]
        since = min(own, max(min(held, default=own), own - self.tunables.catch_up_margin_ms))
        packet = ff.CatchUp(since, node)
        told = older = 0
        for peer in self.peers.values():
            if peer.role is not PeerRole.SLAVE or peer.stand_in_for is not None or peer is asking:
                continue  # a stand-in's node catches up at its link-up, from before this relay started
            if ff.CATCH_UP_FEATURE in ff.features_of(peer.instance):
                peer.push(packet, None)
                told += 1
            else:  # an older node would drop its link over it: its sessions get them at their next login
                older += 1
        log.info("catch_up_asked_of_all", gone=node, since_ms=since, slaves=told, older_slaves=older)
        if self.catch_up is None:
            return
        self.catch_up.missed_since(since)
        self.own_catch_up_again()

    def own_catch_up_again(self) -> None:
        """Runs the catch-up of the node's own sessions beside serving (what it was told it
        missed, or a run before serving that failed), after the one running."""
        if self.catch_up is None:
            return
        if self._catching_up:  # one at a time (two would interleave their users' pages)
            self._again = True
            return
        if self._tasks is None:  # not serving: the catch-up before serving again covers it
            return
        try:
            self._tasks.start_soon(self._own_catch_up)
        except RuntimeError:  # its nursery closed (serving ended): as when not serving
            return
        self._catching_up = True
        self._caught_up = trio.Event()

    async def _own_catch_up_done(self, deadline: float) -> None:
        """Waits until the catch-up of the node's own sessions is delivered (a gone peer's
        messages before a new link's), until `deadline` at most: an admitted slave hears no
        beat meanwhile, and gives its link up after link_dead_after_s."""
        if self._caught_up.is_set():
            return
        with trio.move_on_at(deadline) as scope:
            await self._caught_up.wait()
        if scope.cancelled_caught:
            log.warning("catch_up_slow", waited_s=self.tunables.link_warmup_s)

    async def _own_catch_up(self) -> None:
        """The node's own sessions' catch-up, again while drops come during it, and while it
        fails (new links wait until it is delivered or has failed once)."""
        assert self.catch_up is not None
        try:
            while True:
                self._again = False
                await self.catch_up.run_until_done(self._caught_up)
                if not self._again:
                    return
        finally:
            self._catching_up = False
            self._caught_up.set()

    # --- the listener -------------------------------------------------------------------

    async def serve(self, listeners: Listeners, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serves the forward channel on bound `listeners` (wss:// when they are TLS ones),
        with the lean WebSocket server of the client port (node/ws_server.py)."""
        async def handler(request: Request) -> None:
            try:
                await self._serve_peer(request)
            except Exception:  # noqa: BLE001 - the forward link bulkhead: one link, never the node
                log.exception("forward_peer_crashed")

        try:
            async with trio.open_nursery() as nursery:
                self._tasks = nursery
                await nursery.start(functools.partial(serve_websockets, handler, listeners,
                                                      max_message_size=PRE_AUTH_MAX_FRAME,
                                                      handshake_timeout=self.tunables.link_handshake_timeout_s,
                                                      close_timeout=5, admission=self.admission))
                nursery.start_soon(self._warm_up)
                if self.catch_up is not None and self.catch_up.last_failed:  # the run before serving
                    self.own_catch_up_again()  # tried again beside serving, one run at a time
                task_status.started()
        finally:
            self._tasks = None

    async def _expected_slaves(self) -> set[str]:
        while True:
            try:
                nodes = await self.redis(self.registry.nodes)
            except StoreUnavailable as exc:
                log.warning("warm_up_check_failed", error=str(exc))
                await trio.sleep(self.tunables.link_warmup_retry_s)
                continue
            return {n.node_id for n in nodes  # standbys link like slaves; never ourselves
                    if n.alive and n.role in ("slave", "standby") and n.node_id != self.node_id}

    async def _stand_in_for_unlinked(self, expected: set[str]) -> None:
        """A stand-in peer for each slave alive in Redis that this relay knows nothing of: one
        that was unlinked when this master started (or took over) may hold its senders' acked
        messages. If that process dies (its lease lapses) or restarts (the node links under
        another lease owner) before it links here, it is dropped like a known peer, and every
        node catches up from this relay's start; if it links, it is the peer."""
        now = self.started_ms
        for node in sorted(expected - set(self.peers)):
            try:
                owner = await self.redis(self.registry.node_owner, node)
            except StoreUnavailable as exc:  # none for it: if it dies, `reap_dead` finds its routes left
                log.warning("stand_in_failed", peer=node, error=str(exc))
                continue
            if owner is None or node in self.peers:  # its lease lapsed, or it linked meanwhile
                continue
            self.peers[node] = self._unknown_slave(node, now, stand_in_for=owner)

    def _unknown_slave(self, node: str, down_at_ms: int, stand_in_for: str | None = None) -> Peer:
        """A slave peer for a process of `node` this relay never knew (no instance, no stream of
        its own): a stand-in, or the dead one `_catch_up_for_unknown` catches up for."""
        return Peer(name=node, stream=PeerStream(), owner=self, node_id=node, instance="",
                    role=PeerRole.SLAVE, down_at_ms=down_at_ms, stand_in_for=stand_in_for)

    async def _replace_stand_in(self, auth: PeerAuthenticated) -> int | None:
        """The node of a stand-in links: the process the stand-in was for (returns the
        stand-in's down time, which its peer keeps until its link brought what it held), or a
        new one (the old one is dropped, and every node catches up for it)."""
        stand_in = self.peers.get(auth.node)
        if stand_in is None or stand_in.stand_in_for is None:
            return None
        owner = await self.redis(self.registry.node_owner, auth.node)
        if self.peers.get(auth.node) is not stand_in:  # reaped meanwhile
            return None
        if owner == stand_in.stand_in_for:
            del self.peers[auth.node]  # the same process: `_peer_for` makes its peer
            return stand_in.down_at_ms
        self.drop_peer(auth.node, "restarted before it linked to this master")
        return None

    def _linked_slaves(self) -> set[str]:
        return {k for k, p in self.peers.items() if p.role is PeerRole.SLAVE and p.connection is not None}

    async def _warm_up(self) -> None:
        """Sets `warm` once every slave alive in Redis (when we started) has linked, or after
        link_warmup_s; woken by each slave that links."""
        self.started_ms = self.clock_ms()
        with trio.move_on_after(self.tunables.link_warmup_s):
            expected = await self._expected_slaves()
            await self._stand_in_for_unlinked(expected)
            while not expected <= self._linked_slaves():
                await self._linked.wait()
        log.info("forward_hub_warm", linked=sorted(self._linked_slaves()))
        self.warm.set()

    async def _serve_peer(self, request: Request) -> None:
        if request.origin is not None:  # only a browser sends one: a web page has no business here
            log.warning("handshake_rejected", reason="a browser on the forward port", origin=request.origin,
                        host=request.host, remote=request.remote)
            await request.reject(403, b"the forward port takes nodes and operator tools, not browsers")
            return
        ws = MessageSocket(await request.accept())
        conn: ForwardConnection[Tag] = ForwardConnection(PeerRole.MASTER, self.node_id, self.secret,
                                                         epoch=self.epoch, instance=self.instance)
        try:
            with trio.fail_after(self.tunables.link_handshake_timeout_s):
                peer = await self._handshake(ws, conn)
        except (trio.TooSlowError, ConnectionClosed, StoreUnavailable) as exc:
            log.warning("forward_handshake_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if peer is None:
            return
        if request.slot is not None:  # a node or tool that proved the secret: never capped
            request.slot.authenticated()
        structlog.contextvars.bind_contextvars(peer=peer.name)
        log.info("forward_peer_up", role=peer.role.value, pending=len(peer))
        try:
            if peer.role is PeerRole.SLAVE:
                # Both waits within link_warmup_s of the admission (the slave hears no beat).
                deadline = trio.current_time() + self.tunables.link_warmup_s
                await self.warm.wait()  # the route table is complete (see the module's rules)
                await self._own_catch_up_done(deadline)
                peer.pumping(self.clock_ms())
            ended = await pump(ws, conn, peer, self.tunables)
        finally:
            if peer.role is PeerRole.SLAVE:
                peer.link_ended(self.clock_ms(), self.tunables.link_dead_after_s * 1000)
            peer.connection = None
            peer.conn = None
            peer.pump_done.set()
            if peer.role is PeerRole.OPERATOR:
                self.drop_peer(peer.name, "operator done")
        log.info("forward_peer_lost", reason=ended.reason.value, detail=ended.detail, pending=len(peer))

    async def _handshake(self, ws: MessageSocket, conn: ForwardConnection[Tag]) -> Peer | None:
        """Runs the connection's handshake; admits or refuses the authenticated peer. None: the
        link ended (refused, or the peer broke the protocol: logged)."""
        while True:
            for event in await exchange(ws, conn):
                if isinstance(event, LinkEnded):
                    self._ended_in_handshake(ws, conn, event)
                    await ws.aclose(event.close_code, event.detail[:100])
                    return None
                if isinstance(event, PeerAuthenticated):
                    return await self._admit(ws, conn, event)
                self._note(event)
            if conn.max_message_size > PRE_AUTH_MAX_FRAME:
                ws.raise_message_limit(conn.max_message_size)

    def _ended_in_handshake(self, ws: MessageSocket, conn: ForwardConnection[Tag], event: LinkEnded) -> None:
        self._note(event)
        if event.reason in (EndReason.BAD_MAC, EndReason.WRONG_NODE, EndReason.NEWER_EPOCH, EndReason.FENCED):
            log.warning("forward_peer_refused", peer=conn.peer_node,
                        role=conn.peer_role.value if conn.peer_role else None,
                        why=event.reason.value, reason=event.detail)
        else:
            log.warning("forward_handshake_failed", peer=conn.peer_node, why=event.reason.value, error=event.detail)

    async def _admit(self, ws: MessageSocket, conn: ForwardConnection[Tag], auth: PeerAuthenticated) -> Peer | None:
        problem = await self._admission_problem(auth)
        if problem:
            log.warning("forward_peer_refused", peer=auth.node, role=auth.role.value, why="refused", reason=problem)
            await ws.send_message(conn.send(Refuse(problem)))
            self._note(conn.close())
            await ws.aclose(1008, problem[:100])
            return None
        held_since = await self._replace_stand_in(auth) if auth.role is PeerRole.SLAVE else None
        peer = self._peer_for(auth)
        if held_since is not None and peer.down_at_ms is None:
            peer.down_at_ms = held_since
        await self._retire_connection(peer)
        data = conn.send(Admit(peer.stream))
        if conn.state is LinkState.CLOSED:  # its resend claim did not hold
            assert conn.ended is not None
            self._ended_in_handshake(ws, conn, conn.ended)
            await ws.send_message(data)
            await ws.aclose(conn.ended.close_code, conn.ended.detail[:100])
            return None
        peer.connection = ws
        peer.conn = conn
        peer.pumping(self.clock_ms())  # again once its admission's waits are over
        peer.pump_done = trio.Event()
        if auth.role is PeerRole.SLAVE:
            self.routes.replace_node(auth.node, [(user, session) for user, session, _, _ in auth.sessions])
            self._linked.set()
        await ws.send_message(data)
        return peer

    async def _retire_connection(self, peer: Peer) -> None:
        """The same process reconnected while its old connection seemed open: end the old
        pump before the new connection rewinds the window, so no batch is taken twice."""
        old = peer.connection
        if old is None:
            return
        with trio.move_on_after(self.tunables.link_handshake_timeout_s / 2):
            await old.aclose(1001, "replaced by a new connection")
            await peer.pump_done.wait()

    async def reap_dead(self) -> None:
        """Drops peers whose lease lapsed and purges dead nodes' routes in Redis."""
        try:
            asked = self.clock_ms()
            nodes = await self.redis(self.registry.nodes)
            # Registered but not alive: its lease lapsed. A node Redis does not list at all is
            # not dead: Redis lost its data and the node re-registers at its next heartbeat.
            dead = {n.node_id for n in nodes if not n.alive}
            # A peer still linked is alive whatever Redis says (its lease lapsed in a Redis
            # outage or loss, or across a failover): dropping its queue would ack its packets
            # undelivered. Its link's own watchdog ends a link that went silent.
            dropped = [k for k, p in self.peers.items()
                       if p.role is PeerRole.SLAVE and k in dead and p.connection is None]
            self.sightings.saw({n.node_id: n.heartbeat_at for n in nodes}, asked)
            for key in dropped:
                released = self.sightings.released(key, self.clock_ms())
                if released is None:
                    self.drop_peer(key, "its lease lapsed in Redis, or it stopped (this master saw no heartbeat "
                                        "of it yet to tell)")
                elif not released:
                    self.drop_peer(key, "its lease lapsed in Redis")
                elif self.peers[key].stand_in_for is not None:
                    self.drop_peer(key, "it stopped before it linked to this master (its lease released, "
                                        "not lapsed)", stopped=True)
                else:
                    self.drop_peer(key, "it stopped (its lease released, not lapsed)", stopped=True)
            for node in nodes:
                if not node.alive:
                    purged = await self.redis(self.registry.purge_routes, node.node_id)
                    if purged:
                        log.warning("dead_node_routes_purged", dead_node=node.node_id, routes=purged)
                        self._catch_up_for_unknown(node, dropped)
        except StoreUnavailable as exc:
            log.warning("reaper_failed", error=str(exc))

    def _catch_up_for_unknown(self, node: NodeInfo, dropped: list[str]) -> None:
        """A dead slave whose routes were left (it did not stop cleanly) that this relay had no
        peer or stand-in for (it died before the warm-up looked, or Redis did not answer it):
        it may have held acked messages, so every node catches up as for a known one, from
        this relay's start. Only within catch_up_margin_ms of that start: later, one that never
        linked here was cut off long before, and a catch-up from then would re-send all that."""
        if (node.node_id in dropped or node.node_id in self.peers or node.node_id == self.node_id
                or node.role not in ("slave", "standby")):
            return
        if self.clock_ms() - self.started_ms > self.tunables.catch_up_margin_ms:
            log.warning("catch_up_not_asked", gone=node.node_id, why="it never linked to this master")
            return
        self._catch_up_everywhere(self._unknown_slave(node.node_id, self.started_ms))

    async def run_reaper(self, every: float) -> None:
        while True:
            await trio.sleep(every)
            await self.reap_dead()

    async def _admission_problem(self, auth: PeerAuthenticated) -> str | None:
        if auth.role is PeerRole.OPERATOR:
            return None
        existing = self.peers.get(auth.node)
        if existing is not None and existing.connection is not None and existing.instance != auth.instance:
            return f"node id {auth.node!r} is connected already"
        nodes = {n.node_id: n for n in await self.redis(self.registry.nodes)}
        known = nodes.get(auth.node)
        if known is None or not known.alive:
            return f"unknown node id {auth.node!r}: {UNREGISTERED}"
        return None

    def _peer_for(self, auth: PeerAuthenticated) -> Peer:
        """The peer of this node and instance; a new one (whose receiver starts at the peer's
        `base`: after a restart of ours, a slave resends from there) if we have none."""
        key = auth.node if auth.role is PeerRole.SLAVE else f"operator:{auth.node}:{auth.instance}"
        peer = self.peers.get(key)
        if peer is not None and peer.instance != auth.instance:
            self.drop_peer(key, "restarted (new instance)")
            peer = None
        if peer is None:
            # A peer we dropped (its lease lapsed) may come back with what it received from
            # the dropped stream: the new one numbers on from there.
            stream: PeerStream[Tag] = PeerStream.from_base(auth.instance, auth.base, auth.received)
            peer = Peer(name=key, stream=stream, owner=self, node_id=auth.node, instance=auth.instance, role=auth.role)
            self.peers[key] = peer
        return peer
