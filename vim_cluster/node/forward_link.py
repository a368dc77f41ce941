"""The slave side of the forward channel: one persistent, authenticated link to the master.

Rules:
- Connects to vim.cluster.master-url, proves it holds the cluster secret (HMAC over both
  nonces) and checks that the master does too, then reports every local session.
- Reconnects forever with capped exponential backoff and jitter (started over only after a link
  that stayed up STABLE_S: a link dropped right after its handshake is not retried in a hot
  loop); packets queued meanwhile are kept and sent (in order) once the link is back; the
  master drops duplicates.
- Everything addressed to other nodes goes to the master, which knows where users are.
- A wss:// master-url is verified (CA of vim.websocket.tls.ca-file, hostname); a failed attempt
  is logged once per cause as `forward_link_failed` naming the master URL and the cause
  (refused, timeout, TLS verification, the secret), which /healthz shows while the link is down.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Callable
from typing import Any

import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ..core.backoff import Backoff
from ..errors import CloseCode
from ..protocol import forward_frames as ff
from ..protocol.codec import OutFrame
from ..protocol.forward import Inbox, Outbox, OutItem
from .delivery import Delivery
from .hub import Session
from .link import MAX_FRAME, LinkEnd, pump
from .master_finder import MasterFinder
from .ws_open import LinkOpenError, open_link

log = structlog.get_logger()
HANDSHAKE_TIMEOUT = 10.0
STABLE_S = 5.0  # a link that stayed up this long starts the reconnect backoff over
# TCP connect + WebSocket upgrade. trio-websocket 0.12 notices a connection that the far end
# closes during the upgrade (a proxy or load balancer without a backend) only at this timeout.
OPEN_TIMEOUT = 5.0


class ForwardLinkRefused(Exception):
    """The master refused this node (unknown or duplicate node id, bad secret)."""


class SlaveLink:
    def __init__(self, node_id: str, master_url: str, secret: bytes, delivery: Delivery,
                 clock_ms: Callable[[], int], ssl_context: ssl.SSLContext | None = None,
                 finder: MasterFinder | None = None,
                 fence_in: Callable[[int], str | None] = lambda epoch: None) -> None:
        self.node_id = node_id
        self.finder = finder  # where the active master is (Redis, then the master-url candidates)
        self.master_fence = 0  # the fencing epoch of the master we link to (from its challenge)
        self.master_url = master_url
        self.ssl_context = ssl_context
        self.problem = "not connected yet"  # why the link is down (for /healthz)
        self.secret = secret
        self.delivery = delivery
        self.clock_ms = clock_ms
        self.epoch = secrets.token_hex(8)
        self.connected = False
        self.master_id: str | None = None
        self.end = LinkEnd(Outbox(), Inbox(epoch=""), self._on_packet, self._on_acked, self._ack_value,
                           fence_out=lambda: self.master_fence, fence_in=fence_in)

    # --- ClusterLink -----------------------------------------------------------------

    def deliver(self, users: list[int], frame: OutFrame, exclude: str | None) -> None:
        packet = ff.Deliver(self.node_id, tuple(users), frame.wire_object(), exclude, self.clock_ms())
        self.end.push(packet)

    def kick(self, dst: str, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> None:
        self.end.push(ff.Kick(dst, user, session, int(code), notice.wire_object() if notice else None))

    def session_opened(self, session: Session) -> None:
        self.end.push(ff.SessionOpen(session.user_id, session.id, session.client, session.uuid))

    def session_closed(self, session: Session) -> None:
        self.end.push(ff.SessionClose(session.user_id, session.id))

    def queue_depth(self) -> int:
        return len(self.end.outbox)

    def healthy(self) -> bool:
        return self.connected

    # --- link ------------------------------------------------------------------------

    def _on_packet(self, seq: int, packet: ff.Packet) -> None:
        if isinstance(packet, ff.Deliver):
            self.delivery.apply_deliver(packet.users, packet.frame, packet.exclude, packet.ts, self.clock_ms())
        elif isinstance(packet, ff.Kick):
            self.delivery.apply_kick(packet.user, packet.session, packet.code, packet.notice)
        elif isinstance(packet, ff.Presence):
            self.delivery.apply_presence(packet.changes)
        else:
            raise ff.ForwardProtocolError(f"the master sent a {type(packet).__name__}")

    def _on_acked(self, items: list[OutItem]) -> None:
        return None  # nothing waits on our packets but the outbox itself

    def _ack_value(self) -> int:
        return self.end.inbox.received

    async def run(self) -> None:
        """Keeps the link up until cancelled; a refused or failed attempt is retried."""
        backoff = Backoff()
        while True:
            try:
                if self.finder is not None:
                    self.master_url = await self.finder.locate()
                async with open_link(self.master_url, self.ssl_context, timeout=OPEN_TIMEOUT,
                                     max_message_size=MAX_FRAME) as ws:
                    with trio.fail_after(HANDSHAKE_TIMEOUT):
                        await self._handshake(ws)
                    self.connected = True
                    self.problem = ""
                    up_since = trio.current_time()
                    log.info("forward_link_up", master=self.master_id, master_url=self.master_url,
                             pending=len(self.end.outbox))
                    reason = await self._pump(ws)
                    self.problem = f"link to {self.master_url} lost: {reason}"
                    log.warning("forward_link_lost", reason=reason, master_url=self.master_url,
                                pending=len(self.end.outbox))
                    if trio.current_time() - up_since >= STABLE_S:
                        backoff.reset()  # not after a link that failed at once: no hot reconnect loop
            except (LinkOpenError, OSError, ConnectionClosed, trio.TooSlowError, ff.ForwardProtocolError,
                    ForwardLinkRefused, LookupError) as exc:
                self._failed(exc)
            finally:
                self.connected = False
            if self.finder is None:
                await trio.sleep(backoff.next_delay())
            else:  # at once when Redis names a new master
                await self.finder.wait_retry(backoff.next_delay())

    async def _pump(self, ws: WebSocketConnection) -> str:
        """The pump; with a finder, until Redis names a newer master too."""
        if self.finder is None:
            return await pump(ws, self.end)
        reasons: list[str] = []
        async with trio.open_nursery() as nursery:
            async def pump_then_stop() -> None:
                reasons.append(await pump(ws, self.end))
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump_then_stop)
            assert self.master_id is not None
            await self.finder.wait_superseded(self.master_id, self.master_fence)
            reasons.append(f"superseded: Redis names a newer master ({self.finder.view})")
            nursery.cancel_scope.cancel()
        return reasons[0]

    def _failed(self, exc: Exception) -> None:
        """Logs a failed attempt with the master URL and the cause, in one line."""
        problem = link_problem(self.master_url, exc)
        if problem != self.problem:
            log.warning("forward_link_failed", master_url=self.master_url, error=problem)
        else:
            log.debug("forward_link_failed", master_url=self.master_url, error=problem)
        self.problem = problem

    async def _handshake(self, ws: WebSocketConnection) -> None:
        sessions = [[s.user_id, s.id, s.client, s.uuid] for u in self.delivery.hub.users()
                    for s in self.delivery.hub.sessions(u)]
        challenge, welcome = await client_handshake(
            ws, self.node_id, "slave", self.epoch, self.secret, self._received_from, sessions,
            base=self.end.outbox.acked_upto, check=self._check_master)
        self.master_id = challenge.node
        self.master_fence = int(challenge.fence)
        self.end.outbox.rewind(int(welcome.received))

    def _check_master(self, challenge: ff.Challenge) -> None:
        if self.finder is not None:
            stale = self.finder.linked(self.master_url, challenge.node, int(challenge.fence))
            if stale:
                raise ForwardLinkRefused(f"fenced: {stale}")

    def _received_from(self, master_epoch: str) -> int:
        if master_epoch != self.end.inbox.epoch:  # a new master process: start over
            self.end.inbox = Inbox(epoch=master_epoch)
        return self.end.inbox.received


def link_problem(master_url: str, exc: Exception) -> str:
    """One line: which master, what went wrong."""
    if isinstance(exc, LinkOpenError):
        return str(exc)
    if isinstance(exc, LookupError):
        return str(exc)
    if isinstance(exc, ForwardLinkRefused):
        return f"{master_url} refused this node: {exc}"
    if isinstance(exc, trio.TooSlowError):
        return f"{master_url}: timeout: no answer to the forward handshake within {HANDSHAKE_TIMEOUT:g} s"
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        detail = f"code {reason.code} {reason.reason or ''}".strip() if reason else "no reason"
        return f"{master_url} closed the connection during the handshake ({detail})"
    return f"{master_url}: {type(exc).__name__}: {exc}"


async def client_handshake(
    ws: WebSocketConnection, node_id: str, role: str, epoch: str, secret: bytes,
    received_from: Callable[[str], int], sessions: list[list[Any]], base: int = 0,
    check: Callable[[ff.Challenge], None] = lambda challenge: None,
) -> tuple[ff.Challenge, ff.Welcome]:
    """The connecting side's handshake: hello, check the master's proof, prove ours.

    `base` is our Outbox's acked_upto: a master with no Inbox for our epoch starts one there."""
    nonce = secrets.token_hex(16)
    await ws.send_message(ff.encode_frame(ff.Hello(node_id, role, epoch, nonce)))
    challenge = ff.decode_frame(await ws.get_message())
    if isinstance(challenge, ff.Refused):
        raise ForwardLinkRefused(challenge.reason)
    if not isinstance(challenge, ff.Challenge):
        raise ff.ForwardProtocolError(f"expected a challenge, got {type(challenge).__name__}")
    mac = ff.slave_mac(secret, node_id, nonce, challenge.nonce)
    if not ff.mac_ok(ff.master_mac(secret, nonce, challenge.nonce), challenge.mac):
        # Our proof still goes (nothing else: no sessions), so that the master sees a peer with
        # another secret and refuses it by name in its log, rather than a hang-up.
        await ws.send_message(ff.encode_frame(ff.Auth(mac, 0, [], 0)))
        raise ForwardLinkRefused("the master does not hold the cluster secret")
    check(challenge)  # a proven master of a superseded epoch: ForwardLinkRefused
    await ws.send_message(ff.encode_frame(ff.Auth(mac, received_from(challenge.epoch), [], base)))
    await ws.send_message(ff.encode_frame(ff.Sessions(sessions)))
    answer = ff.decode_frame(await ws.get_message())
    if isinstance(answer, ff.Refused):
        raise ForwardLinkRefused(answer.reason)
    if not isinstance(answer, ff.Welcome):
        raise ff.ForwardProtocolError(f"expected welcome, got {type(answer).__name__}")
    return challenge, answer


async def send_as_operator(master_url: str, secret: bytes, packets: list[ff.Packet], timeout: float = 10.0,
                           ssl_context: ssl.SSLContext | None = None) -> None:
    """Sends packets to the master as an operator tool and returns once all are acked (the
    master acks a kick when the node holding the session has it)."""
    with trio.fail_after(timeout):
        async with open_link(master_url, ssl_context, timeout=OPEN_TIMEOUT, max_message_size=MAX_FRAME) as ws:
            challenge, _ = await client_handshake(ws, f"operator-{secrets.token_hex(4)}", "operator",
                                                  secrets.token_hex(8), secret, lambda epoch: 0, [])
            items = list(enumerate(packets, start=1))
            await ws.send_message(ff.encode_frame(ff.Batch(items, 0, challenge.fence)))
            while True:
                frame = ff.decode_frame(await ws.get_message())
                if isinstance(frame, ff.Batch) and frame.ack is not None and frame.ack >= len(items):
                    return
