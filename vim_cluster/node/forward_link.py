"""The slave side of the forward channel: one persistent, authenticated link to the master.

Rules:
- Connects to vim.cluster.master-url, proves it holds the cluster secret (HMAC over both
  nonces) and checks that the master does too, then reports every local session (the
  handshake is ForwardConnection's; this module only moves its bytes).
- Reconnects forever with capped exponential backoff and jitter (started over only after a link
  that stayed up link_stable_s: a link dropped right after its handshake is not retried in a hot
  loop); packets queued meanwhile are kept and sent (in order) once the link is back; the
  master drops duplicates.
- Everything addressed to other nodes goes to the master, which knows where users are. A
  Deliver joins one still unsent for the same users (node/delivery.py `merged_deliver`), going
  back only past Delivers for none of its users (`passes`): a group commit's messages to one
  chat cross as one packet, and every device gets its frames in the order they were pushed.
- The queue's bound (vim.cluster.forward-queue-bytes: Tunables.link_queue_bytes): the client
  frames of the Delivers it holds for the master (unacked) count. One that comes when they
  reach the cap empties the queue (so one message, however large, never does alone), if the
  master it last linked to takes a slave's CatchUp (feature `catch-up`): every Deliver held
  becomes an empty one under the same sequence number (the master may have some already), a
  CatchUp(since the oldest was queued, this node) follows them, and until the link is up
  again no Delivers are queued (`dropping`). The master then asks every node to catch up
  since then (node/forward_hub.py), before anything after it: the messages come from the
  store to their recipients and their senders' other devices (receipts and notices are lost,
  as when a slave dies). Other packets (route updates, kicks) are small and always kept. A
  master of an earlier release, or none linked since the start (which release is unknown):
  the queue is kept whole (`forward_queue_over_cap`, logged once).
- Fencing: frames carry the epoch this node follows (the master's, learned at each handshake,
  or set with `set_epoch`); a master of an older epoch is refused.
- Catch-up (node/catch_up.py): once linked, the node re-delivers from the store what its
  sessions may have missed while it was not linked; packets that arrive on the new link
  meanwhile are held and delivered after it, so each sender's order holds. The same when the
  master sends a CatchUp packet (a slave died or restarted with packets it had not relayed:
  node/forward_hub.py), for the packets after it. Kicks and presence are not held: they
  apply at once. One catch-up runs at a time; held packets
  wait link_warmup_s at most (a slow store then gives older messages after newer ones, never
  stops live delivery); a catch-up the store fails lets them go at once and is tried again
  while linked (CatchUp.run_until_done); a link that ends cancels its catch-up, left for the
  next link-up. The held packets then go out in order, a frame at a time, each once its
  recipients' send queues have room (a client that reads promptly is not closed 4004 by the
  burst), while newer ones are held behind them, for link_warmup_s at most: then the rest at
  once (a session whose queue is full keeps them in its backlog: node/local_sessions.py; a
  client that reads nothing is closed 4004).
- A session opened while linked, or while the link's handshake runs (after the hello that
  lists the sessions), replays its offline messages only once the master acked its SessionOpen
  (`routed`, at most link_routed_wait_s): a message relayed before the master knew the route is
  then in the replay (a session opened while unlinked is in the next hello, and has the catch-up).
- A wss:// master-url is verified (CA of vim.websocket.tls.ca-file, hostname); a failed attempt
  is logged once per cause as `forward_link_failed` naming the master URL and the cause
  (refused, timeout, TLS verification, the secret), which /healthz shows while the link is down.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import structlog
import trio
from trio_websocket import ConnectionClosed

from ..core.backoff import Backoff
from ..errors import CloseCode
from ..protocol import forward_frames as ff
from ..protocol.codec import OutFrame
from ..protocol.forward import PeerStream
from ..protocol.forward_connection import (
    MAX_FRAME,
    UNREGISTERED,
    Acked,
    Connect,
    EndReason,
    EpochRaised,
    Event,
    Flush,
    ForwardConnection,
    LinkEnded,
    LinkOpened,
    PacketsReceived,
    PeerRole,
)
from ..tunables import DEFAULTS, Tunables
from .catch_up import CatchUpRun
from .delivery import (
    MERGE_LOOKBACK,
    LocalDelivery,
    deliver_packet,
    kick_packet,
    merged_deliver,
    passes,
)
from .link import MessageWebSocket, PeerLink, exchange, pump
from .link_tally import LinkTally
from .local_sessions import Session
from .master_finder import MasterFinder
from .ws_open import LinkOpenError, open_link

log = structlog.get_logger()
# Timings (the node's Tunables): link_stable_s, link_handshake_timeout_s, link_routed_wait_s (how
# long a new session's offline replay waits for the master to ack its SessionOpen: the master
# holds a new link's packets while it warms up, link_warmup_s) and link_open_timeout_s (TCP
# connect + WebSocket upgrade; trio-websocket 0.12 notices a connection that the far end closes
# during the upgrade, a proxy or load balancer without a backend, only at this timeout).
# What the peer said or did that ends a handshake: the master refused us, or is not the master.
_REFUSALS = (EndReason.REFUSED_BY_PEER, EndReason.BAD_MAC, EndReason.WRONG_NODE, EndReason.FENCED)


class NotConfirmed(trio.TooSlowError):
    """The master took an operator's packets but did not ack them all in time: a node they go
    to has not acked them (its link is down); the master keeps them for it while it is live."""


class ForwardLinkRefused(Exception):
    """The master refused this node (unknown or duplicate node id, bad secret), or this node
    refused the master (it does not hold the secret, or its epoch is older than ours)."""


class SlaveLink:
    def __init__(self, node_id: str, master_url: str, secret: bytes, local: LocalDelivery,
                 clock_ms: Callable[[], int], ssl_context: ssl.SSLContext | None = None, *, epoch: int = 0,
                 finder: MasterFinder | None = None, watch: Callable[[Event], None] = lambda event: None,
                 catch_up: CatchUpRun | None = None, reregister: Callable[[], None] | None = None,
                 tunables: Tunables = DEFAULTS, on_dropped: Callable[[int], None] = lambda frames: None) -> None:
        self.node_id = node_id
        # called when the master refuses this node as not registered (UNREGISTERED): the lease's
        # heartbeat, now, so that the next attempt finds the node registered again
        self.reregister = reregister
        self.tunables = tunables
        self.catch_up = catch_up  # run at each link-up before anything the link brings is delivered
        self.held: list[ff.Packet] | None = None  # packets received while the catch-up runs
        self._tasks: trio.Nursery | None = None  # while linked: where catch-ups run
        self.unrouted: dict[str, trio.Event] = {}  # session id -> set once the master acked its SessionOpen
        self.finder = finder  # where the active master is (node/master_finder.py); None: master_url only
        self.tally = LinkTally(watch, far_end="master")  # watch: the node's fence and metrics
        self.master_url = master_url
        self.ssl_context = ssl_context
        self.problem = "not connected yet"  # why the link is down (for /healthz)
        self.secret = secret
        self.local = local
        self.clock_ms = clock_ms
        self.epoch = epoch  # the fencing epoch this node follows
        self.instance = ff.instance_with(secrets.token_hex(8), *([ff.CATCH_UP_FEATURE] if catch_up else []))
        self.connected = False
        self.master_id: str | None = None
        self.peer: PeerLink[None] = PeerLink("master", PeerStream(), self)
        self.conn: ForwardConnection[None] | None = None
        self.refused_packets = 0  # packets the master may not send (a SessionOpen ...)
        self._all_acked: trio.Event | None = None  # while `leave` waits: set once nothing is unacked
        # The queue's bound (see the rules): bytes of the client frames held in Delivers, what the
        # master it last linked to takes, and whether Delivers are dropped until the next link-up.
        self.queued_bytes = 0
        self.master_features: frozenset[str] = frozenset()
        self.dropping = False
        self.on_dropped = on_dropped  # frames dropped (the node's metric)
        self._empty = ff.Deliver(node_id, [], b"", None, 0)  # what an emptied Deliver becomes
        self._over_cap_told = False

    def set_epoch(self, epoch: int) -> None:
        """The cluster's fencing epoch is now `epoch` (a takeover): refuse older masters."""
        self.epoch = epoch
        if self.conn is not None:
            self.conn.set_epoch(epoch)

    # --- ClusterLink -----------------------------------------------------------------

    def deliver(self, users: list[int], frames: Sequence[OutFrame], exclude: str | None) -> None:
        if self.dropping:  # the master's catch-up brings them (see the rules)
            self.on_dropped(len(frames))
            return
        packet = deliver_packet(self.node_id, users, frames, exclude, self.clock_ms())
        if self.queued_bytes >= self.tunables.link_queue_bytes and self._empty_queue(packet):
            return
        self.queued_bytes += packet.size
        if not self.peer.stream.window.merge_unsent(packet, merged_deliver, passes(packet), MERGE_LOOKBACK):
            self.peer.push(packet)

    def take_over(self, packet: ff.Packet) -> None:
        """A packet the link this one replaces held (roles.hand_over), in its order."""
        if isinstance(packet, ff.Deliver):
            self.queued_bytes += packet.size
        self.peer.push(packet)

    def _empty_queue(self, packet: ff.Deliver) -> bool:
        """`packet` comes to a queue at its cap: empties its Delivers, `packet` with them,
        and asks the master for the catch-up (True), or keeps them if the master would not
        understand (False). See the rules."""
        cap = self.tunables.link_queue_bytes
        if ff.CATCH_UP_FEATURE not in self.master_features:
            if not self._over_cap_told:
                self._over_cap_told = True
                why = "the master is of an earlier release" if self.master_id else "no master linked since the start"
                log.warning("forward_queue_over_cap", master=self.master_id, cap_bytes=cap,
                            why=f"{why}: the queue is kept whole")
            return False
        empty = self._empty
        emptied = self.peer.stream.window.empty_out(
            lambda held: empty if held.kind == ff.DELIVER and held is not empty else None)
        delivers = [held for held in emptied if isinstance(held, ff.Deliver)] + [packet]
        since = min(held.ts for held in delivers)
        frames = sum(len(held.frames) for held in delivers)
        self.peer.push(ff.CatchUp(since, self.node_id))
        self.queued_bytes = 0
        self.dropping = not self.connected
        self.on_dropped(frames)
        log.warning("forward_queue_overflow", master=self.master_id, dropped_frames=frames, since_ms=since,
                    cap_bytes=cap, linked=self.connected)
        return True

    def kick(self, dst: str, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> None:
        self.peer.push(kick_packet(dst, user, session, code, notice))

    def session_opened(self, session: Session) -> None:
        self.peer.push(ff.SessionOpen(session.user_id, session.id, session.client, session.uuid))
        # Linked, or linking (the hello that lists the sessions is sent: the master learns this
        # one from its SessionOpen, which it may read only after its own catch-up, seconds after
        # this link's catch-up read the store): the replay waits for the route. Unlinked: the
        # next hello lists the session, and the catch-up at that link-up covers it.
        if self.conn is not None:
            self.unrouted[session.id] = trio.Event()

    def session_closed(self, session: Session) -> None:
        self.peer.push(ff.SessionClose(session.user_id, session.id))
        self._routed(session.id)

    async def routed(self, session: Session) -> None:
        event = self.unrouted.get(session.id)
        if event is None:
            return
        with trio.move_on_after(self.tunables.link_routed_wait_s) as scope:
            await event.wait()
        self.unrouted.pop(session.id, None)
        if scope.cancelled_caught:
            log.warning("session_route_unconfirmed", session_id=session.id, user_id=session.user_id,
                        waited_s=self.tunables.link_routed_wait_s)

    def _routed(self, session_id: str) -> None:
        event = self.unrouted.pop(session_id, None)
        if event is not None:
            event.set()

    def _all_routed(self) -> None:
        """The link ended: nobody waits for it (the catch-up at the next link-up covers them)."""
        for event in self.unrouted.values():
            event.set()
        self.unrouted.clear()

    def queue_depth(self) -> int:
        return len(self.peer)

    async def leave(self) -> bool:
        """The node stops and will queue nothing more (its sessions are gone, its store writer
        idle: node/app.py): tells the master so (a Leaving packet, after all it queued), which
        then asks no node to catch up for this process, and waits until the master acked
        everything (the caller bounds the wait, and stops the node right after, so the packet
        never goes to another master). False, and nothing sent: not linked, or a master of an
        earlier release (it would drop the link over the packet); False after sending it: the
        link ended before the master acked everything."""
        conn = self.conn
        if not self.connected or conn is None or ff.LEAVING_FEATURE not in ff.features_of(conn.peer_instance or ""):
            return False
        self._all_acked = trio.Event()
        self.peer.push(ff.Leaving(self.node_id))
        await self._all_acked.wait()  # or the link ended (run's finally)
        if len(self.peer):
            log.warning("forward_link_leave_unacked", master=self.master_id, unacked=len(self.peer))
            return False
        log.info("forward_link_left", master=self.master_id)
        return True

    def healthy(self) -> bool:
        return self.connected

    # --- link events -----------------------------------------------------------------

    def link_event(self, peer: PeerLink[Any], event: Event) -> None:
        if isinstance(event, PacketsReceived):
            if self.held is not None:
                # Only messages need to wait behind the catch-up: a kick (another login of the
                # same client type, a deleted account) and presence apply at once, not up to
                # link_warmup_s later.
                now = [p for p in event.packets if isinstance(p, (ff.Kick, ff.Presence))]
                if now:
                    self._apply(now)
                    self.held.extend(p for p in event.packets if not isinstance(p, (ff.Kick, ff.Presence)))
                else:
                    self.held.extend(event.packets)
            else:
                self._apply(event.packets)
        elif isinstance(event, Acked):
            for item in event.items:  # new sessions' replays wait for their route (see the rules)
                if isinstance(item.packet, ff.SessionOpen):
                    self._routed(item.packet.session)
                elif isinstance(item.packet, ff.Deliver):
                    self.queued_bytes -= item.packet.size
            if not len(self.peer):
                self.queued_bytes = 0
            if self._all_acked is not None and not len(self.peer):
                self._all_acked.set()
        else:  # about the link itself (handshake, fencing, its end)
            self.tally.note(event)
            if isinstance(event, EpochRaised):
                log.info("forward_epoch_raised", master=event.peer, old=event.old, new=event.new)
                self.epoch = max(self.epoch, event.new)

    def _apply(self, packets: Sequence[ff.Packet]) -> None:
        """Carries out packets from the master on this node's sessions."""
        now = self.clock_ms()
        local = self.local
        for i, packet in enumerate(packets):
            if isinstance(packet, ff.Deliver):
                local.apply_deliver(packet.users, packet.frame, packet.message_id, packet.exclude, packet.ts, now)
            elif isinstance(packet, ff.Kick):
                local.apply_kick(packet.user, packet.session, packet.code, packet.notice)
            elif isinstance(packet, ff.Presence):
                local.apply_presence(packet.changes)
            elif isinstance(packet, ff.CatchUp):
                if self._catch_up_before(packet, packets[i + 1:]):
                    return
            else:
                self.refused_packets += 1
                log.warning("forward_packet_refused", master=self.master_id, packet=type(packet).__name__)

    def _catch_up_before(self, packet: ff.CatchUp, rest: Sequence[ff.Packet]) -> bool:
        """The master says a slave died or restarted with packets it may not have relayed:
        runs the catch-up since its link went down, holding `rest` and what comes after until
        it is delivered (True). False: `rest` is applied at once (the link is down: the
        catch-up of the next link-up covers it)."""
        log.info("catch_up_asked", dead_node=packet.node, since_ms=packet.since)
        if self.catch_up is None:
            return False
        self.catch_up.missed_since(packet.since)
        if self._tasks is None:
            return False
        self.held = list(rest)
        self._tasks.start_soon(self._catch_up_then_release)
        return True

    async def _catch_up_then_release(self) -> None:
        """Runs the catch-up, then delivers the packets held meanwhile (also when cancelled).
        They wait link_warmup_s at most: past it (a slow store) live delivery goes on beside
        the catch-up, which then may deliver older messages after newer ones."""
        try:
            if self.catch_up is not None and self._tasks is not None:
                done = trio.Event()
                self._tasks.start_soon(self._one_catch_up_run, done)
                with trio.move_on_after(self.tunables.link_warmup_s) as waited:
                    await done.wait()
                if waited.cancelled_caught:
                    log.warning("catch_up_slow", held=len(self.held or ()), waited_s=self.tunables.link_warmup_s)
            with trio.move_on_after(self.tunables.link_warmup_s) as paced:
                await self._release_paced()
            if paced.cancelled_caught:
                log.warning("held_release_slow", held=len(self.held or ()), waited_s=self.tunables.link_warmup_s)
        finally:
            self._release()

    async def _release_paced(self) -> None:
        """Delivers the held packets in order, each Deliver once the send queues it goes to
        have room for its frames (LocalDelivery.room_for), while what arrives meanwhile is held
        behind them: released in one go, more than send-queue-frames of them closed a
        recipient 4004 even while it read promptly. Stops before a CatchUp packet (`_release`
        hands the rest to its own catch-up); the caller bounds the wait, then `_release`
        delivers what is left at once (into the backlog of a recipient whose queue is full:
        one that reads nothing is closed 4004)."""
        while self.held:
            batch, self.held = frame_by_frame(self.held), []
            done = 0
            try:
                for packet in batch:
                    if isinstance(packet, ff.CatchUp):
                        return
                    if isinstance(packet, ff.Deliver):
                        await self.local.room_for(packet)
                    self._apply([packet])
                    done += 1
            finally:
                self.held = batch[done:] + (self.held or [])

    async def _one_catch_up_run(self, done: trio.Event) -> None:
        """One run at a time (CatchUp's own lock), tried again while it fails: `done` is set
        once it is delivered or has failed once (a store that does not answer delivers nothing
        before the held packets)."""
        assert self.catch_up is not None
        try:
            await self.catch_up.run_until_done(done)
        finally:
            done.set()

    def _release(self) -> None:
        held, self.held = self.held, None
        if held:
            self._apply(held)

    # --- link ------------------------------------------------------------------------

    async def run(self) -> None:
        """Keeps the link up until cancelled; a refused or failed attempt is retried."""
        backoff = Backoff()
        while True:
            try:
                if self.finder is not None:
                    self.master_url = await self.finder.locate()
                    self.epoch = max(self.epoch, self.finder.fence.known)  # older masters are refused
                async with open_link(self.master_url, self.ssl_context, timeout=self.tunables.link_open_timeout_s,
                                     max_message_size=MAX_FRAME) as ws:
                    conn: ForwardConnection[None] = ForwardConnection(
                        PeerRole.SLAVE, self.node_id, self.secret, epoch=self.epoch, stream=self.peer.stream,
                        instance=self.instance)
                    self.conn = conn
                    if self.catch_up is not None:
                        self.held = []  # until the catch-up is delivered
                    with trio.fail_after(self.tunables.link_handshake_timeout_s):
                        opened = await client_handshake(ws, conn, self.local.sessions(), self.peer)
                    self.master_id = opened.peer
                    self.master_features = ff.features_of(conn.peer_instance or "")
                    self.dropping = False  # what comes from now on goes after the CatchUp
                    if self.finder is not None:
                        self.finder.linked(self.master_url, opened.peer, conn.epoch)
                    self.connected = True
                    self.problem = ""
                    up_since = trio.current_time()
                    log.info("forward_link_up", master=self.master_id, master_url=self.master_url,
                             epoch=conn.epoch, pending=len(self.peer), resending=opened.resending)
                    reason = await self._pump_caught_up(ws, conn)
                    self.problem = f"link to {self.master_url} lost: {reason}"
                    log.warning("forward_link_lost", reason=reason, master_url=self.master_url,
                                pending=len(self.peer))
                    if trio.current_time() - up_since >= self.tunables.link_stable_s:
                        backoff.reset()  # not after a link that failed at once: no hot reconnect loop
            except (LinkOpenError, OSError, ConnectionClosed, trio.TooSlowError, ff.ForwardProtocolError,
                    ForwardLinkRefused, LookupError) as exc:
                self._failed(exc)
                if isinstance(exc, ForwardLinkRefused) and UNREGISTERED in str(exc) and self.reregister is not None:
                    self.reregister()
            finally:
                self._link_down()
            if self.finder is None:
                await trio.sleep(backoff.next_delay())
            else:  # sooner when a master takes the lease meanwhile
                await self.finder.wait_retry(backoff.next_delay())

    def _link_down(self) -> None:
        """The link ended (or never opened): what waited for it goes on without it."""
        self.connected = False
        self.conn = None
        if self._all_acked is not None:  # `leave` gives up: this process stops
            self._all_acked.set()
        self._release()
        self._all_routed()
        if self.catch_up is not None:
            self.catch_up.lost()

    async def _pump_caught_up(self, ws: MessageWebSocket, conn: ForwardConnection[None]) -> str:
        """The pump, with the link-up's catch-up running beside it until it is delivered (and
        those a CatchUp packet asks for)."""
        if self.catch_up is None:
            return await self._pump(ws, conn)
        async with trio.open_nursery() as nursery:
            self._tasks = nursery
            try:
                if self.held is not None:
                    nursery.start_soon(self._catch_up_then_release)
                reason = await self._pump(ws, conn)
                # The link is down: a catch-up running now is left for the next link-up (it
                # puts its start back), and what it held is delivered (see run's finally).
                nursery.cancel_scope.cancel()
                return reason
            finally:
                self._tasks = None

    async def _pump(self, ws: MessageWebSocket, conn: ForwardConnection[None]) -> str:
        """The pump until the link ends or (with a finder) Redis names a newer master."""
        if self.finder is None:
            ended = await pump(ws, conn, self.peer, self.tunables)
            return f"{ended.reason.value}: {ended.detail}"
        reasons: list[str] = []
        async with trio.open_nursery() as nursery:
            async def pump_then_stop() -> None:
                ended = await pump(ws, conn, self.peer, self.tunables)
                reasons.append(f"{ended.reason.value}: {ended.detail}")
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump_then_stop)
            assert self.master_id is not None
            await self.finder.wait_superseded(self.master_id, conn.epoch)
            reasons.append(f"superseded: Redis names {self.finder.view}")
            nursery.cancel_scope.cancel()
        return reasons[0]

    def _failed(self, exc: Exception) -> None:
        """Logs a failed attempt with the master URL and the cause, in one line."""
        problem = link_problem(self.master_url, exc, self.tunables.link_handshake_timeout_s)
        if problem != self.problem:
            log.warning("forward_link_failed", master_url=self.master_url, error=problem)
        else:
            log.debug("forward_link_failed", master_url=self.master_url, error=problem)
        self.problem = problem


def frame_by_frame(packets: Sequence[ff.Packet]) -> list[ff.Packet]:
    """`packets`, each Deliver of several frames split in one a frame (each still a list, whose
    frame reads its own message id): a send queue may hold fewer frames than a packet carries."""
    return [part for packet in packets
            for part in ([packet._replace(frame=[text]) for text in packet.frame]
                         if isinstance(packet, ff.Deliver) and isinstance(packet.frame, list) else [packet])]


def link_problem(master_url: str, exc: Exception,
                 handshake_timeout_s: float = DEFAULTS.link_handshake_timeout_s) -> str:
    """One line: which master, what went wrong."""
    if isinstance(exc, LinkOpenError):
        return str(exc)
    if isinstance(exc, LookupError | NotConfirmed):
        return str(exc)
    if isinstance(exc, ForwardLinkRefused):
        return f"{master_url} refused this node: {exc}"
    if isinstance(exc, trio.TooSlowError):
        return f"{master_url}: timeout: no answer to the forward handshake within {handshake_timeout_s:g} s"
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        detail = f"code {reason.code} {reason.reason or ''}".strip() if reason else "no reason"
        return f"{master_url} closed the connection during the handshake ({detail})"
    return f"{master_url}: {type(exc).__name__}: {exc}"


async def client_handshake(ws: MessageWebSocket, conn: ForwardConnection[Any], sessions: list[ff.SessionRow],
                           peer: PeerLink[Any] | None = None) -> LinkOpened:
    """The connecting side's handshake on `conn`: hello, check the master's proof, prove ours,
    report `sessions`. Events other than LinkOpened go to the peer's owner."""
    await ws.send_message(conn.send(Connect(sessions)))
    while True:
        for event in await exchange(ws, conn):
            if peer is not None:
                peer.owner.link_event(peer, event)
            if isinstance(event, LinkOpened):
                return event
            if isinstance(event, LinkEnded):
                if event.reason in _REFUSALS:
                    raise ForwardLinkRefused(event.detail)
                raise ff.ForwardProtocolError(f"{event.reason.value}: {event.detail}")


async def send_as_operator(master_url: str, secret: bytes, packets: list[ff.Packet], timeout: float = 10.0,
                           ssl_context: ssl.SSLContext | None = None) -> None:
    """Sends packets to the master as an operator tool and returns once all are acked (the
    master acks a kick when the node holding the session has it). TooSlowError: no link or
    handshake within `timeout`; NotConfirmed: the master took them, not every ack came."""
    unconfirmed = False
    try:
        with trio.fail_after(timeout):
            async with open_link(master_url, ssl_context, timeout=DEFAULTS.link_open_timeout_s,
                                 max_message_size=MAX_FRAME) as ws:
                stream: PeerStream[None] = PeerStream()
                conn: ForwardConnection[None] = ForwardConnection(
                    PeerRole.OPERATOR, f"operator-{secrets.token_hex(4)}", secret, stream=stream)
                await client_handshake(ws, conn, [])
                for packet in packets:
                    stream.push(packet)
                await ws.send_message(conn.send(Flush(len(packets) + 1)))
                try:
                    while len(stream.window):
                        for event in await exchange(ws, conn):
                            if isinstance(event, LinkEnded):
                                raise ForwardLinkRefused(event.detail)
                except trio.Cancelled:
                    unconfirmed = True
                    raise
    except trio.TooSlowError:
        if not unconfirmed:
            raise
        raise NotConfirmed(f"{master_url}: not every node confirmed within {timeout:g} s (the master keeps "
                           "the packets for a node whose link to it is down)") from None
