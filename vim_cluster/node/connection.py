"""One client connection's state, what the handlers work with: its ClientState, its SendQueue,
its session (open and close), its ack window.

This module imports neither the handlers nor the serving loop (node/serve.py), which import it.
"""

from __future__ import annotations

import math

import attrs
import structlog
import trio

from ..core.conn_caps import Slot
from ..core.limits import CostBudget, RateWindow
from ..core.login import replaced_sessions
from ..errors import DRAINING_DETAIL, CloseCode, NodeDraining, StoreUnavailable
from ..model import UserId
from ..ports import Route
from ..protocol import frames as f
from ..protocol.codec import OutFrame
from ..protocol.session import ClientState
from .context import NodeContext
from .local_sessions import Session
from .send_queue import Close, SendQueue
from .ws_server import ServerSocket

log = structlog.get_logger()


@attrs.define(eq=False)
class Connection:
    ctx: NodeContext
    ws: ServerSocket
    conn_id: int
    state: ClientState
    send_queue: SendQueue
    cancel_scope: trio.CancelScope  # cancelled: stop reading (a kick of a full queue, a slow consumer)
    address: str  # the client's source key (core.lockout.source_key): what lockouts count by
    slot: Slot | None = None  # its place in the client port's caps: unauthenticated until a session opens
    session: Session | None = None
    contacts_budget: CostBudget = attrs.field(factory=lambda: CostBudget(1))  # set by `new`
    unacked: int = 0  # sent messages and `received` confirms waiting for their commit
    _commits: trio.Event | None = None  # set when one of them is committed (someone waits)

    @classmethod
    def new(cls, ctx: NodeContext, ws: ServerSocket, conn_id: int, address: str, slot: Slot | None = None) -> Connection:
        """A connection just accepted: anonymous, an empty SendQueue (the node's Tunables:
        client_queue_frames, client_queue_bytes)."""
        websocket, tunables = ctx.config.websocket, ctx.tunables
        state = ClientState(trio.current_time(), RateWindow(websocket.rate_limit), websocket.idle_timeout,
                            auth_timeout=tunables.client_auth_timeout_s)
        flusher = ws.flusher if ws.writes_directly else None  # TLS: the writer task writes
        queue = SendQueue(ws, tunables.client_queue_frames, tunables.client_queue_bytes, flusher,
                          linger_s=tunables.client_linger_s, send_bytes=tunables.client_send_bytes)
        return cls(ctx, ws, conn_id, state, queue, trio.CancelScope(), address, slot,
                   contacts_budget=CostBudget(websocket.contacts_budget))

    def pinged(self, pong: bytes) -> None:
        """A WebSocket ping came: it keeps the connection from being idle, as any frame does
        (PROTOCOL.md closes a connection that sends nothing), and its pong is queued. Not while
        the pong of an earlier one still waits: pings are not rate-limited and their pongs
        replace each other, so a client that floods them and reads nothing puts no back-pressure
        on this reader; its idle timeout ends it."""
        if not self.send_queue.control_waiting():
            self.state.last_frame_at = trio.current_time()
        self.send_queue.control(pong)

    async def arm_deadline(self) -> None:
        """Before the reader waits for data: the wait (only the wait) ends at the idle or
        authentication deadline (node/serve.py's _reader disarms it once a frame came); none
        while the offline replay runs (`replay_ended` arms it)."""
        self.cancel_scope.deadline = self.state.deadline()

    def replay_ended(self) -> None:
        """The offline replay ended (node/offline_replay.py): the idle timer restarts now, and
        the reader's wait, if it waits for a frame, ends at the idle deadline again. (While
        the replay ran, its wait for the client to read bounded the connection: 4004.)"""
        state = self.state
        state.replay_ended(trio.current_time())
        if self.cancel_scope.deadline != math.inf:  # armed: the reader waits (ClientState.REPLAYING)
            self.cancel_scope.deadline = state.deadline()

    @property
    def user_id(self) -> int:
        assert self.state.user_id is not None
        return self.state.user_id

    @property
    def session_id(self) -> str | None:
        return self.session.id if self.session else None

    async def reply(self, reply: f.Reply) -> None:
        """Queue a reply behind whatever this connection was sent before. Waits for room, for
        the idle timeout at most (an anonymous client: until its authentication deadline): a
        client that took nothing for so long is a slow consumer (a reader waiting for room would
        otherwise wait for ever, deadlines and all, and the frames sent to its session pile up;
        the offline replay waits the same way for room of its own: offline_replay.queue_frame)."""
        queue = self.send_queue
        if len(queue) >= queue.limit and not await self.wait_for_room():  # else no wait, no cancel scope
            return
        queue.append(OutFrame(reply))

    async def wait_for_room(self, frames: int = 1, size: int = 0, spare: bool = False) -> bool:
        """Waits until the send queue takes `frames` of `size` bytes (SendQueue.room), for the
        idle timeout at most (an anonymous client: until its authentication deadline). False:
        the client took nothing for so long, and is closed as a slow consumer (4004)."""
        with trio.move_on_at(self.state.room_deadline(trio.current_time())) as waited:
            await self.send_queue.room(frames, size, spare=spare)
        if waited.cancelled_caught:
            self.slow_consumer()
            return False
        return True

    def slow_consumer(self) -> None:
        """Close this connection with 4004: its session's way, or the same without one."""
        if self.session is not None:
            self.session.slow_consumer()
            return
        log.warning("slow_consumer_closed", conn_id=self.conn_id)
        self.cancel_scope.cancel()
        self.send_queue.abort(Close(CloseCode.SLOW_CONSUMER, "slow-consumer"))

    def answer(self, reply: f.Reply) -> None:
        """Queue a reply without waiting (acks: the ack window bounds them)."""
        self.send_queue.append(OutFrame(reply))

    async def ack_window(self) -> None:
        """Waits while the ack window's worth of sent messages and `received` confirms
        (Tunables.client_ack_window) wait for their commit."""
        await self._wait_commits(self.ctx.tunables.client_ack_window - 1)

    async def all_committed(self) -> None:
        await self._wait_commits(0)

    async def _wait_commits(self, at_most: int) -> None:
        while self.unacked > at_most:
            if self._commits is None:
                self._commits = trio.Event()
            await self._commits.wait()

    def acked_one(self) -> None:
        self.unacked -= 1
        if self._commits is not None:
            self._commits.set()
            self._commits = None

    async def open_session(self, user_id: int, client: str, uuid: str | None, holding: bool) -> Session:
        """Makes this connection a live session of `user_id`: registers the route in Redis,
        joins LocalSessions, and closes the sessions it replaces.

        With `holding`, live frames are held until `offline_replay.release` (used while
        replaying). Raises StoreUnavailable if Redis is down (then nothing stays registered, unless
        Redis also refuses the route's removal: `route_left_behind`), and NodeDraining while the
        node drains or stops.
        """
        ctx = self.ctx
        if ctx.draining:  # drained by an operator, or stopping: nothing may be queued for the cluster any more
            raise NodeDraining(DRAINING_DETAIL)
        session = Session(
            id=str(await ctx.ids.next_id()),
            user_id=user_id,
            client=client,
            uuid=uuid,
            send_queue=self.send_queue,
            cancel_scope=self.cancel_scope,
            holding=[] if holding else None,
            idle_timeout=self.state.idle_timeout,
        )
        route = Route(session.id, ctx.node_id, client, uuid)
        # Read with the add, in one transaction: read before it, two sessions of one client type
        # opening at once on two nodes each missed the other, and both stayed.
        try:
            earlier = await ctx.redis(ctx.registry.add_route, UserId(user_id), route)
        except StoreUnavailable:  # perhaps after the route was written (its liveness read failed)
            await self._forget_route(UserId(user_id), session.id)
            raise
        if ctx.draining:  # it began meanwhile: its kicks would miss this session
            await ctx.redis(ctx.registry.remove_route, UserId(user_id), session.id)
            raise NodeDraining(DRAINING_DETAIL)
        ctx.local_sessions.add(session)
        # Replaced already by a session that saw its route: that one is the newer, and stays
        # (this one would find it among the local sessions and close it too).
        replaced = ctx.delivery.local.take_early_kick(session)
        ctx.delivery.cluster.session_opened(session)
        self.session = session
        if self.slot is not None:  # authenticated: no longer under the unauthenticated cap
            self.slot.authenticated()
        log.info("session_opened", session_id=session.id, user_id=user_id, client=client)
        if replaced:
            return session
        # Sessions Redis may not list yet (opened a moment ago here) count too.
        local = [Route(s.id, ctx.node_id, s.client, s.uuid) for s in ctx.local_sessions.sessions(user_id)]
        candidates = {r.session_id: r for r in [*earlier, *local]}
        notice = OutFrame(f.OtherLogin(uuid, ctx.node_id))
        for old in replaced_sessions(candidates.values(), session.id, client):
            ctx.delivery.kick(old.node_id, user_id, old.session_id, CloseCode.OTHER_LOGIN, notice)
        return session

    async def _forget_route(self, user_id: UserId, session_id: str) -> None:
        """Removes the route of a session that failed to open, if Redis takes it: else it would
        list a session that does not exist (whereis, presence) until this node stops."""
        try:
            await self.ctx.redis(self.ctx.registry.remove_route, user_id, session_id)
        except StoreUnavailable as exc:
            self.ctx.routes_left.add((user_id, session_id))  # removed once Redis answers again
            log.warning("route_left_behind", session_id=session_id, user_id=user_id, error=str(exc))

    async def close_session(self) -> None:
        """Leaves LocalSessions and removes this session's route (never a newer session's)."""
        session = self.session
        if session is None:
            return
        ctx = self.ctx
        ctx.local_sessions.remove(session)
        ctx.delivery.cluster.session_closed(session)
        try:
            await ctx.redis(ctx.registry.remove_route, UserId(session.user_id), session.id)
        except StoreUnavailable as exc:
            # Removed again at the first heartbeat Redis answers (app.remove_routes_left).
            ctx.routes_left.add((UserId(session.user_id), session.id))
            log.warning("route_remove_failed", session_id=session.id, user_id=session.user_id, error=str(exc))
        log.info("session_closed", session_id=session.id, user_id=session.user_id)
