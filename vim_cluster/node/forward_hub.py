"""The master side of the forward channel: authenticates slaves and relays between nodes.

Rules:
- A slave proves it holds the cluster secret (HMAC over both nonces) and must be registered
  and alive in Redis. Until its proof checked out, a peer's frames are capped at
  PRE_AUTH_MAX_FRAME (its session list comes after the proof, in a `sessions` frame); a node id that already has a live link, or is the master's own, is
  refused. Operator tools (role "operator") may send kicks only.
- The master is an ordinary node for its own clients; it also keeps the route table (which
  node holds which user's sessions) from the slaves' reports.
- A packet from slave A is acknowledged to A only when every forward the master made of it was
  acknowledged by its destination (end to end), so a master restart loses nothing: A resends.
- A peer whose lease lapsed in Redis is dead: its queue is dropped (its users replay from the
  store when they reconnect elsewhere), its routes are forgotten here and purged in Redis.
- After the master starts, it relays nothing from slaves until every slave alive in Redis has
  linked (and so reported its sessions), for at most WARMUP_S: a restarted master's route table
  is empty, and a slave's queued packets for users of a slave that has not linked yet would find
  no route and be acked as done, never reaching those users' open sessions.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import structlog
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
)

from ..core import presence
from ..core.relay import RouteTable
from ..errors import CloseCode, StoreUnavailable
from ..ports import Registry
from ..protocol import forward_frames as ff
from ..protocol.codec import OutFrame
from ..protocol.forward import Inbox, Outbox, OutItem, UpstreamAcks
from .blocking import BlockingRunner
from .delivery import Delivery
from .hub import Session
from .link import MAX_FRAME, LinkEnd, pump
from .listeners import Listeners
from .ws_listener import ListenerConnection, ListenerServer

log = structlog.get_logger()
HANDSHAKE_TIMEOUT = 10.0
# Frames of a peer that has not proved it holds the secret (hello, auth) are small: a larger
# one closes its connection (1009), so unauthenticated peers cannot make the master buffer
# more than this per connection. MAX_FRAME applies once the auth MAC checked out.
PRE_AUTH_MAX_FRAME = 4096
WARMUP_S = 7.0  # below link.DEAD_AFTER_S: a slave held meanwhile must not give up on the link
Tag = tuple[str, str, int]  # (source node, its epoch, its seq): whom to ack when done


@attrs.define(eq=False)
class Peer:
    node_id: str
    epoch: str
    role: str
    end: LinkEnd
    upstream: UpstreamAcks
    connection: WebSocketConnection | None = None
    pump_done: trio.Event = attrs.Factory(trio.Event)


class MasterHub:
    def __init__(self, node_id: str, secret: bytes, delivery: Delivery, registry: Registry,
                 redis: BlockingRunner, clock_ms: Callable[[], int], fence: int = 0,
                 fence_check: Callable[[int], str | None] = lambda epoch: None) -> None:
        self.node_id = node_id
        self.fence = fence  # this master's fencing epoch (core/mastership.py), on every frame
        self.fence_check = fence_check  # the verdict on a peer frame's epoch
        self.secret = secret
        self.delivery = delivery
        self.registry = registry
        self.redis = redis
        self.clock_ms = clock_ms
        self.epoch = secrets.token_hex(8)
        self.routes = RouteTable()
        self.board = presence.PresenceBoard()
        self.peers: dict[str, Peer] = {}
        self.warm = trio.Event()  # every slave alive in Redis has linked since we started

    # --- ClusterLink (the master's own traffic) -----------------------------------------

    def deliver(self, users: list[int], frame: OutFrame, exclude: str | None) -> None:
        plan = self.routes.plan(users, skip=self.node_id)
        if plan:
            self._forward(plan, frame.wire_object(), exclude, self.node_id, self.clock_ms(), tag=None)

    def kick(self, dst: str, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> None:
        self._send_kick(ff.Kick(dst, user, session, int(code), notice.wire_object() if notice else None), None)

    def session_opened(self, session: Session) -> None:
        self.routes.add(session.user_id, session.id, self.node_id)

    def session_closed(self, session: Session) -> None:
        self.routes.remove(session.user_id, session.id)

    def queue_depth(self) -> int:
        return sum(len(p.end.outbox) for p in self.peers.values())

    def healthy(self) -> bool:
        return True

    # --- relaying -----------------------------------------------------------------------

    def _forward(self, plan: dict[str, list[int]], frame: dict[str, Any], exclude: str | None,
                 src: str, ts: int, tag: Tag | None) -> int:
        forwards = 0
        for node, users in plan.items():
            peer = self.peers.get(node)
            if peer is None or node == self.node_id:
                continue
            peer.end.push(ff.Deliver(src, tuple(users), frame, exclude, ts), tag)
            forwards += 1
        return forwards

    def _send_kick(self, kick: ff.Kick, tag: Tag | None) -> int:
        if kick.dst == self.node_id:
            self.delivery.apply_kick(kick.user, kick.session, kick.code, kick.notice)
            return 0
        peer = self.peers.get(kick.dst)
        if peer is None:
            return 0
        peer.end.push(kick, tag)
        return 1

    def _on_packet(self, peer: Peer, seq: int, packet: ff.Packet) -> None:
        tag: Tag = (peer.node_id, peer.epoch, seq)
        forwards = 0
        if isinstance(packet, ff.Deliver) and peer.role == "slave":
            self.delivery.apply_deliver(packet.users, packet.frame, packet.exclude, packet.ts, self.clock_ms())
            plan = self.routes.plan(packet.users, skip=peer.node_id)
            forwards = self._forward(plan, packet.frame, packet.exclude, packet.src, packet.ts, tag)
        elif isinstance(packet, ff.Kick):
            forwards = self._send_kick(packet, tag)
        elif isinstance(packet, ff.SessionOpen) and peer.role == "slave":
            self.routes.add(packet.user, packet.session, peer.node_id)
        elif isinstance(packet, ff.SessionClose) and peer.role == "slave":
            self.routes.remove(packet.user, packet.session)
        else:
            raise ff.ForwardProtocolError(f"a {peer.role} may not send {type(packet).__name__}")
        peer.upstream.received_packet(seq, forwards)

    def _no_packet(self, seq: int, packet: ff.Packet) -> None:
        raise ff.ForwardProtocolError("a packet before the peer was set up")

    def _complete(self, items: list[OutItem]) -> None:
        touched: set[str] = set()
        for item in items:
            if item.tag is None:
                continue
            node, epoch, seq = item.tag
            source = self.peers.get(node)
            if source is not None and source.epoch == epoch:
                source.upstream.forward_done(seq)
                touched.add(node)
        for node in touched:
            self.peers[node].end.wake.set()  # its ack may have moved

    # --- presence (see core/presence.py) ---------------------------------------------------

    def publish_presence(self) -> int:
        """Announces the net presence changes since the last call to every session in the
        cluster: local sessions directly, each slave's in one `presence` packet."""
        changes = self.board.changes(self.routes.take_touched(), self.routes.node_of)
        if not changes:
            return 0
        self.delivery.presence_local(changes)
        packet = ff.Presence([[c.user, c.online, c.node] for c in changes])
        for peer in self.peers.values():
            if peer.role == "slave":
                peer.end.push(packet, None)
        return len(changes)

    async def run_presence(self, window: float = presence.WINDOW_S) -> None:
        while True:
            await trio.sleep(window)
            self.publish_presence()

    def drop_peer(self, node_id: str, why: str) -> None:
        """Forget a dead or restarted peer: its queue, its routes."""
        peer = self.peers.pop(node_id, None)
        if peer is None:
            return
        dropped = peer.end.outbox.drain()
        self._complete(dropped)
        sessions = self.routes.drop_node(node_id)
        log.warning("forward_peer_dropped", peer=node_id, why=why, dropped_packets=len(dropped), sessions=sessions)

    # --- the listener -------------------------------------------------------------------

    async def serve(self, listeners: Listeners, *,
                    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED) -> None:
        """Serves the forward channel on bound `listeners` (wss:// when they are TLS ones)."""
        async def handler(request: WebSocketRequest) -> None:
            try:
                await self._serve_peer(request)
            except Exception:  # noqa: BLE001 - the forward link bulkhead: one link, never the node
                log.exception("forward_peer_crashed")

        async with trio.open_nursery() as nursery:
            server = ListenerServer(handler, listeners, max_message_size=PRE_AUTH_MAX_FRAME,
                                    connect_timeout=HANDSHAKE_TIMEOUT, disconnect_timeout=5)
            await nursery.start(server.run)
            nursery.start_soon(self._warm_up)
            task_status.started(server)

    async def _warm_up(self) -> None:
        """Sets `warm` once every slave alive in Redis has linked, or after WARMUP_S."""
        with trio.move_on_after(WARMUP_S):
            while True:
                try:
                    nodes = await self.redis(self.registry.nodes)
                except StoreUnavailable as exc:
                    log.warning("warm_up_check_failed", error=str(exc))
                else:
                    expected = {n.node_id for n in nodes
                                if n.alive and n.role in ("slave", "standby") and n.node_id != self.node_id}
                    linked = {k for k, p in self.peers.items() if p.role == "slave" and p.connection is not None}
                    if expected <= linked:
                        break
                await trio.sleep(0.1)
        log.info("forward_hub_warm", linked=sorted(k for k, p in self.peers.items() if p.role == "slave"))
        self.warm.set()

    async def _serve_peer(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                peer = await self._handshake(ws)
        except (ff.ForwardProtocolError, trio.TooSlowError, ConnectionClosed, StoreUnavailable) as exc:
            log.warning("forward_handshake_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if peer is None:
            return
        structlog.contextvars.bind_contextvars(peer=peer.node_id)
        log.info("forward_peer_up", role=peer.role, pending=len(peer.end.outbox))
        try:
            if peer.role == "slave":
                await self.warm.wait()  # the route table is complete (see the module's rules)
            reason = await pump(ws, peer.end)
        finally:
            peer.connection = None
            peer.pump_done.set()
            if peer.role == "operator":
                self.drop_peer(peer.node_id, "operator done")
        log.info("forward_peer_lost", reason=reason, pending=len(peer.end.outbox))

    async def _refuse(self, ws: WebSocketConnection, hello: ff.Hello, reason: str) -> None:
        log.warning("forward_peer_refused", peer=hello.node, role=hello.role, reason=reason)
        await ws.send_message(ff.encode_frame(ff.Refused(reason)))
        await ws.aclose(1008, reason[:100])

    async def _handshake(self, ws: WebSocketConnection) -> Peer | None:
        hello = ff.decode_frame(await ws.get_message())
        if not isinstance(hello, ff.Hello) or hello.role not in ("slave", "operator"):
            raise ff.ForwardProtocolError("expected hello from a slave or an operator")
        nonce = secrets.token_hex(16)
        mac = ff.master_mac(self.secret, hello.nonce, nonce)
        await ws.send_message(ff.encode_frame(ff.Challenge(self.node_id, self.epoch, nonce, mac, self.fence)))
        auth = ff.decode_frame(await ws.get_message())
        if not isinstance(auth, ff.Auth):
            raise ff.ForwardProtocolError("expected auth")
        if not ff.mac_ok(ff.slave_mac(self.secret, hello.node, hello.nonce, nonce), auth.mac):
            await self._refuse(ws, hello, "bad credentials: the peer does not hold the cluster secret")
            return None
        if isinstance(ws, ListenerConnection):
            ws.raise_message_limit(MAX_FRAME)
        listed = ff.decode_frame(await ws.get_message())
        if not isinstance(listed, ff.Sessions):
            raise ff.ForwardProtocolError(f"expected sessions, got {type(listed).__name__}")
        sessions = auth.sessions + listed.sessions
        problem = await self._admission_problem(hello)
        if problem:
            await self._refuse(ws, hello, problem)
            return None
        if not isinstance(auth.base, int) or auth.base < 0:
            raise ff.ForwardProtocolError(f"bad base in auth: {auth.base!r}")
        peer = self._peer_for(hello, auth.base)
        await self._retire_connection(peer)
        peer.connection = ws
        peer.pump_done = trio.Event()
        if hello.role == "slave":
            self.routes.replace_node(hello.node, [(int(s[0]), str(s[1])) for s in sessions])
        await ws.send_message(ff.encode_frame(ff.Welcome(peer.end.inbox.received)))
        peer.end.outbox.rewind(int(auth.received))
        return peer

    async def _retire_connection(self, peer: Peer) -> None:
        """The same process reconnected while its old connection seemed open: end the old
        pump before the new connection rewinds the outbox, so no batch is taken twice."""
        old = peer.connection
        if old is None:
            return
        with trio.move_on_after(HANDSHAKE_TIMEOUT / 2):
            await old.aclose(1001, "replaced by a new connection")
            await peer.pump_done.wait()

    async def reap_dead(self) -> None:
        """Drops peers whose lease lapsed and purges dead nodes' routes in Redis."""
        try:
            nodes = await self.redis(self.registry.nodes)
            # Registered but not alive: its lease lapsed. A node Redis does not list at all is
            # not dead: Redis lost its data and the node re-registers at its next heartbeat.
            dead = {n.node_id for n in nodes if not n.alive}
            # A peer still linked is alive whatever Redis says (its lease lapsed in a Redis
            # outage or loss): dropping its queue would ack its packets undelivered.
            for node_id in [k for k, p in self.peers.items()
                            if p.role == "slave" and k in dead and p.connection is None]:
                self.drop_peer(node_id, "its lease lapsed in Redis")
            for node in nodes:
                if not node.alive:
                    purged = await self.redis(self.registry.purge_routes, node.node_id)
                    if purged:
                        log.warning("dead_node_routes_purged", dead_node=node.node_id, routes=purged)
        except StoreUnavailable as exc:
            log.warning("reaper_failed", error=str(exc))

    async def run_reaper(self, every: float) -> None:
        while True:
            await trio.sleep(every)
            await self.reap_dead()

    async def _admission_problem(self, hello: ff.Hello) -> str | None:
        if hello.role == "operator":
            return None
        if hello.node == self.node_id:
            return f"node id {hello.node!r} is the master's own"
        existing = self.peers.get(hello.node)
        if existing is not None and existing.connection is not None and existing.epoch != hello.epoch:
            return f"node id {hello.node!r} is connected already"
        nodes = {n.node_id: n for n in await self.redis(self.registry.nodes)}
        known = nodes.get(hello.node)
        if known is None or not known.alive:
            return f"unknown node id {hello.node!r}: not registered and alive in Redis"
        return None

    def _peer_for(self, hello: ff.Hello, base: int) -> Peer:
        """The peer of this node and epoch; a new one (whose Inbox starts at the peer's `base`:
        after a restart of ours, a slave resends from there) if we have none."""
        key = hello.node if hello.role == "slave" else f"operator:{hello.node}:{hello.epoch}"
        peer = self.peers.get(key)
        if peer is not None and peer.epoch != hello.epoch:
            self.drop_peer(key, "restarted (new epoch)")
            peer = None
        if peer is None:
            upstream = UpstreamAcks(received=base)
            end = LinkEnd(Outbox(), Inbox(hello.epoch, received=base), on_packet=self._no_packet,
                          on_acked=self._complete, ack_value=upstream.ack_value,
                          fence_out=lambda: self.fence, fence_in=self.fence_check)
            peer = Peer(key, hello.epoch, hello.role, end, upstream)
            end.on_packet = partial(self._on_packet, peer)
            self.peers[key] = peer
        return peer
