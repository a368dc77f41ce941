"""The node's place in the cluster, switched while it runs: a department node links to the
active master; a master-capable node relays while it holds the master lease and relays
nothing (a standby, linked like a department node) otherwise.

Rules:
- The switch follows `Mastership` (an event, no polling): ACTIVE and within the relay
  deadline -> the forward hub serves; anything else -> the hub is cancelled (every forward
  connection closes, the forward port is closed) and a slave link follows the active master.
- Nothing the node's own clients sent is lost in a switch: the packets the old side still held
  unacknowledged (a slave link's outbox; a relay's own packets queued to peers) are handed to the
  new side, which relays them again (clients drop duplicates by id). Packets from other nodes
  need no hand-over: their senders keep them until acked end to end, and resend. A slave
  link's own CatchUp (it emptied its queue past its cap) goes with them: a new link sends it,
  a relay asks the slaves linked to it then, and its own sessions, for the catch-up.
- Catch-up (node/catch_up.py): a slave link re-delivers what the node's sessions may have
  missed once it is up; a relay does so before it starts serving (and after each pause).
- A new relay takes the node's own traffic over only once it is warm (every live slave and
  standby linked): before that its route table is incomplete. Until then the previous side
  keeps queueing it.
"""

from __future__ import annotations

import functools

import attrs
import structlog
import trio

from ..config import NodeConfig
from ..core.mastership import Fence
from ..protocol import forward_frames as ff
from ..protocol.forward_connection import EpochRaised, Event, Fenced
from ..tls import client_context
from .admission import Admission
from .catch_up import CatchUp, deliver_since
from .context import NodeContext
from .delivery import ClusterLink, Unlinked
from .forward_hub import MasterRelay
from .forward_link import SlaveLink
from .listeners import Listeners, bind_forward, port_of
from .master_finder import MasterFinder
from .mastership import MasterMetrics, Mastership

log = structlog.get_logger()


def published_url(config: NodeConfig, port: int) -> str:
    """The forward URL a master publishes: vim.cluster.forward-url, else derived."""
    if config.cluster.forward_url:
        return config.cluster.forward_url
    scheme = "wss" if config.websocket.tls else "ws"
    return f"{scheme}://{config.public_host}:{port}/forward"


@attrs.define(eq=False)
class ClusterRoles:
    ctx: NodeContext
    finder: MasterFinder
    fence: Fence
    metrics: MasterMetrics
    mastership: Mastership | None  # None: not master-capable (a department node)
    forward: Listeners | None  # the bound forward port (closed while not the master)
    forward_port: int | None = attrs.field(init=False)
    catch_up: CatchUp = attrs.field(init=False)
    forward_admission: Admission | None = attrs.field(init=False)  # one for every relay this node runs

    def __attrs_post_init__(self) -> None:
        self.forward_port = port_of(self.forward) if self.forward else None
        self.forward_admission = (None if self.mastership is None else
                                  Admission.for_port("forward", self.ctx.config, self.ctx.metrics, per_address=False))
        self.catch_up = CatchUp(functools.partial(deliver_since, self.ctx), self.ctx.clock_ms,
                                self.ctx.tunables.catch_up_margin_ms, self.ctx.tunables.catch_up_retry_s)

    # --- fencing (the verdicts are ForwardConnection's; core/mastership.py) --------------------

    def _watch(self, event: Event) -> None:
        """EpochRaised and Fenced events of every link of this node."""
        if isinstance(event, Fenced):
            self.fence.refused += 1
            self.metrics.fenced.inc()
            return
        if isinstance(event, EpochRaised):
            self.fence.learn(event.new)
            if self.mastership is not None and self.mastership.holding and event.new > self.mastership.epoch:
                self.mastership.step_down(f"a peer knows epoch {event.new}, newer than ours ({self.mastership.epoch})")

    # --- the switch ---------------------------------------------------------------------------

    async def run(self) -> None:
        if self.mastership is None:
            link = self._slave_link()
            hand_over(self.ctx.delivery.cluster, link, self.ctx.node_id)
            self.ctx.delivery.cluster = link
            await link.run()
            return
        while True:
            if self.mastership.relaying:
                await self._hold()
            else:
                await self._as_standby()

    def _slave_link(self) -> SlaveLink:
        config = self.ctx.config
        return SlaveLink(config.node_id, config.cluster.master_url or "", config.cluster.secret,
                         self.ctx.delivery.local, self.ctx.clock_ms,
                         ssl_context=client_context(config),  # used for wss:// only
                         epoch=self.fence.known, finder=self.finder, watch=self._watch,
                         catch_up=self.catch_up, reregister=self.ctx.ids.lease.beat_soon, tunables=self.ctx.tunables,
                         on_dropped=self.ctx.metrics.forward_dropped.inc)

    async def _as_standby(self) -> None:
        assert self.mastership is not None
        self.ctx.cluster_role = "standby"
        if self.forward is not None:  # not the master: nobody may link here
            for listener in self.forward:
                await trio.aclose_forcefully(listener)
            self.forward = None
        link = self._slave_link()
        hand_over(self.ctx.delivery.cluster, link, self.ctx.node_id)
        self.ctx.delivery.cluster = link
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            while not self.mastership.relaying:
                await self.mastership.changed()
            nursery.cancel_scope.cancel()

    async def _hold(self) -> None:
        """While this node holds the lease: one relay, serving while the RelayGate allows and
        paused (forward port and every link closed, its streams and routes kept) past the
        deadline, until the lease is renewed (or re-taken with a new epoch) or lost."""
        assert self.mastership is not None
        ctx, mastership = self.ctx, self.mastership
        ctx.cluster_role = "master"
        relay = MasterRelay(ctx.node_id, ctx.config.cluster.secret, ctx.delivery.local, ctx.registry, ctx.redis,
                            ctx.clock_ms, epoch=mastership.epoch, watch=self._watch, tunables=ctx.tunables,
                            catch_up=self.catch_up, admission=self.forward_admission)
        for user_id in ctx.local_sessions.users():
            for session in ctx.local_sessions.sessions(user_id):
                relay.session_opened(session)
        while mastership.holding:
            if mastership.relaying:
                await self._relay(relay)
            else:
                await mastership.changed()
        log.warning("relay_retired", epoch=relay.epoch, why="the master lease is lost")

    async def _relay(self, relay: MasterRelay) -> None:
        """Serves the forward channel until the master may not relay any more."""
        assert self.mastership is not None
        ctx, mastership = self.ctx, self.mastership
        if self.forward is None:  # PortTaken (another process took it meanwhile) stops the node
            self.forward = await bind_forward(ctx.config)
            self.forward_port = port_of(self.forward)
        self.metrics.active.set(1)
        log.info("relaying", epoch=mastership.epoch)
        try:
            await self._serve_relay(relay)
        finally:
            self.catch_up.lost()  # links closed: the node's sessions miss relayed messages from now
        self.forward = None  # serving closed it
        self.metrics.active.set(0)
        log.warning("relaying_stopped", epoch=relay.epoch, still_holding=mastership.holding)

    async def _serve_relay(self, relay: MasterRelay) -> None:
        assert self.mastership is not None
        ctx, mastership = self.ctx, self.mastership
        # Before any slave's packet is delivered to the node's sessions (see the module's rules),
        # for link_warmup_s at most: a catch-up waits for room in its sessions' send queues, and
        # sessions whose network is slow to come back (the host was cut off) would keep the forward
        # port unserved for as long. Cut short, it runs again beside serving, and the slaves'
        # packets wait for it as for any catch-up of the master's own sessions (forward_hub.py).
        with trio.move_on_after(ctx.tunables.link_warmup_s) as waited:
            await self.catch_up.run()
        if waited.cancelled_caught:
            log.warning("catch_up_slow", waited_s=ctx.tunables.link_warmup_s, why="before relaying: goes on beside it")
            self.catch_up.last_failed = True  # not done: relay.serve runs it again (its `down_since` was kept)
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.serve, self.forward)  # tries a failed run again beside serving
            nursery.start_soon(relay.run_reaper, ctx.tunables.lease_heartbeat_s)
            nursery.start_soon(relay.run_presence)
            if ctx.delivery.cluster is not relay:
                nursery.start_soon(self._take_over_when_warm, relay)
            while mastership.relaying:
                if relay.epoch != mastership.epoch:  # the lease was re-taken (Redis lost it): same relay
                    log.warning("relay_epoch_raised", old=relay.epoch, new=mastership.epoch)
                    relay.set_epoch(mastership.epoch)
                await mastership.changed()
            nursery.cancel_scope.cancel()

    async def _take_over_when_warm(self, relay: MasterRelay) -> None:
        await relay.warm.wait()
        hand_over(self.ctx.delivery.cluster, relay, self.ctx.node_id)
        self.ctx.delivery.cluster = relay
        for user_id in self.ctx.local_sessions.users():  # sessions opened during the warm-up told the old side
            for session in self.ctx.local_sessions.sessions(user_id):
                relay.session_opened(session)


def pending_own(link: ClusterLink) -> list[ff.Packet]:
    """The packets of this node's own clients that `link` holds unacknowledged, in order."""
    if isinstance(link, Unlinked):
        return list(link.packets)
    if isinstance(link, SlaveLink):
        return [item.packet for item in link.peer.stream.window.items]
    if isinstance(link, MasterRelay):
        return [item.packet for peer in link.peers.values() for item in peer.stream.window.items
                if item.tag is None]
    return []


def hand_over(old: ClusterLink, new: ClusterLink, node_id: str) -> int:
    """Gives `new` what `old` held of this node's own traffic (see the module's rules)."""
    if old is new:
        return 0
    # A CatchUp of this node's own: its slave link emptied its queue (node/forward_link.py)
    packets = [p for p in pending_own(old) if isinstance(p, ff.Deliver | ff.Kick)
               or (isinstance(p, ff.CatchUp) and p.node == node_id)]
    for packet in packets:
        if isinstance(new, SlaveLink):
            new.take_over(packet)
        elif isinstance(new, MasterRelay) and isinstance(packet, ff.CatchUp):
            new.ask_catch_up(packet.since, node_id)  # the slaves linked by then, and its own sessions
        elif isinstance(new, MasterRelay) and isinstance(packet, ff.Deliver):
            plan = new.routes.plan(list(packet.users), skip=node_id)
            new._forward(plan, packet.frame, packet.message_id, packet.exclude, packet.src, packet.ts, tag=None)
        elif isinstance(new, MasterRelay) and isinstance(packet, ff.Kick):
            new._send_kick(packet, None)
    if packets:
        log.info("cluster_link_handed_over", packets=len(packets), to=type(new).__name__)
    return len(packets)
