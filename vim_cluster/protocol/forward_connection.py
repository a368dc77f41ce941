"""One forward link (one WebSocket) as a sans-I/O state machine, built like h11 and wsproto.

API summary (the trio side only moves bytes; everything the protocol decides happens here):

    conn = ForwardConnection(PeerRole.SLAVE, node_id, secret, epoch=0, stream=stream)  # connects
    conn = ForwardConnection(PeerRole.MASTER, node_id, secret, epoch=0)                 # accepts
    conn.send(Connect(sessions)) -> bytes           initiator: the hello
    conn.receive_data(message)                      one forward WebSocket message payload
    for event in conn.events(): ...                 typed events, below
    conn.data_to_send() -> list[bytes]              replies the protocol made itself (challenge,
                                                    auth + sessions, refused): send them in order
    conn.send(Admit(stream)) -> bytes               acceptor, after PeerAuthenticated: the welcome
    conn.send(Refuse(reason)) -> bytes              acceptor, after PeerAuthenticated: refused
    conn.send(Flush(limit)) -> bytes                a batch: unsent packets of the stream + our ack
                                                    (at most `limit`, and fewer if they would make
                                                    more than MAX_FRAME bytes: the rest is next)
    conn.send(Heartbeat(ts)) -> bytes               a beat (keeps the peer's watchdog quiet)
    conn.close(EndReason.X, detail)                 the owner ends the link (timeout, network)
    conn.set_epoch(n)                               our fencing epoch changed (a takeover)
    conn.state: LinkState; conn.max_message_size; conn.has_unsent(); conn.ack_moved()

Packets are queued on the PeerStream (`stream.push(packet, tag)`), which outlives connections:
its UnackedWindow resends after a reconnect, its SeqReceiver drops duplicates.

Events: PeerAuthenticated (acceptor: admit or refuse it), LinkOpened (initiator: welcomed),
PacketsReceived (new packets, in order), Acked (our packets the peer acknowledged, with tags),
EpochRaised (the peer's epoch is newer than ours), Fenced (a frame of an older epoch: refused),
PeerIdle (a beat of an open link: the peer had sent everything it held, so we have it all),
LinkEnded (always the last event: why, as an EndReason, a detail line and the WebSocket close
code to use). Every refusal ends the link with a LinkEnded whose `reason` says which one, so the
owner counts and logs them: BAD_MAC, WRONG_NODE, OVERSIZE, UNKNOWN_FRAME, OUT_OF_ORDER,
WRONG_STATE, FENCED, NEWER_EPOCH, REFUSED (by the owner), REFUSED_BY_PEER. Calling `send`
with an event that does not fit the state is the owner's bug: LocalProtocolError.

Fencing epochs: every frame carries its sender's epoch. A frame older than the connection's
known epoch is refused (Fenced, then LinkEnded(FENCED)). A newer one is reported (EpochRaised):
a connecting side (slave, operator) follows the master's epoch and goes on; the accepting master
ends the link (NEWER_EPOCH), since a newer master exists and it must not relay for it. The one
exception is the hello: a slave that never saw the master's epoch yet may say an older one, and
follows from the challenge on. Before the peer proved the secret its epoch is only a claim: the
hello's is not looked at, and the epoch of a challenge or an auth only once its MAC checked out
(an outsider's hello of epoch 10**18 made the master step down, and a fake master's challenge
raised a slave's fence for good). A slave that finds the master's challenge older than the epoch
it knows sends its proof before refusing, so that the master hears of the newer epoch from a
peer that proved the secret.

The handshake: hello (node, role, instance, nonce) -> challenge (master's MAC over both nonces)
-> auth (the slave's MAC, what it received from the master's instance, its acked base) and its
session list -> welcome (what the master received from this slave instance) or refused. Until
the peer's MAC checked out, a message over PRE_AUTH_MAX_FRAME is refused (OVERSIZE).
"""

from __future__ import annotations

import enum
import secrets
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import attrs

from . import forward_frames as ff
from .forward import OutOfOrder, PeerStream, Unacked
from .forward_frames import PeerRole

PRE_AUTH_MAX_FRAME = 4096
MAX_FRAME = 16 * 1024 * 1024
Tag = TypeVar("Tag")

__all__ = [
    "PRE_AUTH_MAX_FRAME", "MAX_FRAME", "PeerRole", "LinkState", "EndReason", "LocalProtocolError",
    "ForwardConnection", "Connect", "Admit", "Refuse", "Flush", "Heartbeat",
    "PeerAuthenticated", "LinkOpened", "PacketsReceived", "Acked", "EpochRaised", "Fenced", "LinkEnded",
]


# The end of the master's refusal of a node that Redis does not list as alive
# (node/forward_hub.py); a slave that reads it heartbeats at once (node/forward_link.py)
# instead of waiting for its next interval.
UNREGISTERED = "not registered and alive in Redis"


class LinkState(enum.Enum):
    IDLE = "idle"  # initiator, before Connect
    AWAIT_HELLO = "await-hello"  # acceptor
    AWAIT_CHALLENGE = "await-challenge"  # initiator
    AWAIT_AUTH = "await-auth"  # acceptor
    AWAIT_SESSIONS = "await-sessions"  # acceptor (the peer's MAC checked out)
    AWAIT_ADMISSION = "await-admission"  # acceptor: the owner admits (Admit) or refuses (Refuse)
    AWAIT_WELCOME = "await-welcome"  # initiator
    OPEN = "open"
    CLOSED = "closed"


class EndReason(enum.Enum):
    BAD_MAC = "bad-mac"  # the peer does not hold the cluster secret
    WRONG_NODE = "wrong-node"  # the peer claims our own node id, or is not the one expected
    OVERSIZE = "oversize"  # a message over PRE_AUTH_MAX_FRAME before the peer proved the secret
    UNKNOWN_FRAME = "unknown-frame"  # not a forward frame (or a malformed one)
    OUT_OF_ORDER = "out-of-order"  # a sequence gap, an ack or a resend claim beyond what was sent
    WRONG_STATE = "wrong-state"  # a frame that does not belong in the link's state
    FENCED = "fenced"  # a frame of an older epoch
    NEWER_EPOCH = "newer-epoch"  # (master) the peer knows a newer epoch: another master took over
    REFUSED = "refused"  # the owner refused the peer (admission)
    REFUSED_BY_PEER = "refused-by-peer"  # the peer refused us
    CLOSED = "closed"  # the owner closed the link (network loss, timeout, shutdown)

    @property
    def close_code(self) -> int:
        if self is EndReason.OVERSIZE:
            return 1009
        if self in (EndReason.UNKNOWN_FRAME, EndReason.OUT_OF_ORDER, EndReason.WRONG_STATE):
            return 1002
        if self is EndReason.CLOSED:
            return 1000
        return 1008


class LocalProtocolError(Exception):
    """The owner sent an event that does not fit the connection's role or state (a bug)."""


# ----------------------------------------------------------------------------- owner -> connection


@attrs.frozen
class Connect:
    """Initiator: start the handshake. `sessions` goes to the master after its proof checked out."""

    sessions: Sequence[ff.SessionRow] = ()


@attrs.frozen
class Admit(Generic[Tag]):
    """Acceptor: the authenticated peer is welcome; `stream` is its state (PeerStream.from_base
    for a peer instance we have none of)."""

    stream: PeerStream[Tag]


@attrs.frozen
class Refuse:
    reason: str
    why: EndReason = EndReason.REFUSED


@attrs.frozen
class Flush:
    """A batch frame: up to `limit` unsent packets of the stream and our current ack."""

    limit: int = 256


@attrs.frozen
class Heartbeat:
    ts: int = 0


# ----------------------------------------------------------------------------- connection -> owner


@attrs.frozen
class PeerAuthenticated:
    """Acceptor: the peer proved the secret and listed its sessions; answer Admit or Refuse."""

    node: str
    role: PeerRole
    instance: str
    epoch: int
    received: int  # what it got from our instance
    base: int  # what it holds from: a new stream for it starts there
    sessions: Sequence[ff.SessionRow]


@attrs.frozen
class LinkOpened:
    """Initiator: the master welcomed us; `resending` packets go again."""

    peer: str
    instance: str
    epoch: int
    resending: int


@attrs.frozen
class PacketsReceived:
    """New packets from the peer, numbered first, first + 1, ... (duplicates dropped)."""

    first: int
    packets: Sequence[ff.Packet]


@attrs.frozen
class Acked(Generic[Tag]):
    items: list[Unacked[Tag]]


@attrs.frozen
class EpochRaised:
    old: int
    new: int
    peer: str


@attrs.frozen
class Fenced:
    frame_epoch: int
    known_epoch: int
    peer: str


@attrs.frozen
class LinkEnded:
    reason: EndReason
    detail: str

    @property
    def close_code(self) -> int:
        return self.reason.close_code


@attrs.frozen
class PeerIdle:
    """A beat on an open link: the peer beats only when it has nothing unsent, and frames
    arrive in order, so every packet it held when it beat has reached us."""


Event = PeerAuthenticated | LinkOpened | PacketsReceived | Acked[Any] | EpochRaised | Fenced | PeerIdle | LinkEnded


class _End(Exception):
    def __init__(self, reason: EndReason, detail: str, reply: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.reply = reply  # a Refused frame's reason to send the peer, if any


class ForwardConnection(Generic[Tag]):
    """One forward WebSocket; `role` is ours: SLAVE or OPERATOR connect, MASTER accepts."""

    def __init__(self, role: PeerRole, node_id: str, secret: bytes, *, epoch: int = 0,
                 stream: PeerStream[Tag] | None = None, instance: str | None = None,
                 expect_peer: str | None = None) -> None:
        self.role = role
        self.node_id = node_id
        self.secret = secret
        self.epoch = epoch  # the highest fencing epoch this connection knows
        self.instance = instance or secrets.token_hex(8)
        self.expect_peer = expect_peer  # initiator: the master's node id, when known
        self.initiator = role is not PeerRole.MASTER
        self.state = LinkState.IDLE if self.initiator else LinkState.AWAIT_HELLO
        self.stream: PeerStream[Tag] | None = stream
        if self.initiator and stream is None:
            self.stream = PeerStream()
        self.peer_node: str | None = None  # known after hello (acceptor) or challenge (initiator)
        self.peer_role: PeerRole | None = PeerRole.MASTER if self.initiator else None
        self.peer_instance: str | None = None
        self.ended: LinkEnded | None = None
        self.sent_ack = -1  # the ack our last batch carried
        self.duplicates = 0  # packets dropped as already received
        self._authenticated = False  # the peer proved the secret
        self._frame_epoch = 0  # the epoch of the frame being handled
        self._nonce = secrets.token_hex(16)
        self._peer_nonce = ""
        self._sessions: Sequence[ff.SessionRow] = ()
        self._auth: ff.Auth | None = None
        self._events: deque[Event] = deque()
        self._out: list[bytes] = []

    # --- owner API ------------------------------------------------------------------------

    @property
    def max_message_size(self) -> int:
        """What the transport may buffer for one message now."""
        return MAX_FRAME if self._authenticated else PRE_AUTH_MAX_FRAME

    def set_epoch(self, epoch: int) -> None:
        """Our fencing epoch changed (the standby machinery read a new one from its lease)."""
        self.epoch = epoch

    def events(self) -> Iterator[Event]:
        while self._events:
            yield self._events.popleft()

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def has_unsent(self) -> bool:
        return self.state is LinkState.OPEN and self.stream is not None and self.stream.window.has_unsent()

    def ack_moved(self) -> bool:
        return self.state is LinkState.OPEN and self.stream is not None and self.stream.ack_value() != self.sent_ack

    def close(self, reason: EndReason = EndReason.CLOSED, detail: str = "closed") -> LinkEnded:
        """The owner ends the link (the network dropped it, the peer went silent ...)."""
        if self.ended is None:
            self._finish(reason, detail)
        assert self.ended is not None
        return self.ended

    def send(self, event: Connect | Admit[Tag] | Refuse | Flush | Heartbeat) -> bytes:
        if self.state is LinkState.CLOSED:
            raise LocalProtocolError(f"cannot send {type(event).__name__}: the link ended")
        if isinstance(event, Flush):
            return self._flush(event.limit)
        if isinstance(event, Heartbeat):
            if self.state is not LinkState.OPEN:
                raise LocalProtocolError("a heartbeat before the link is open")
            return ff.encode_frame(ff.Beat(event.ts), self.epoch)
        if isinstance(event, Connect):
            if self.state is not LinkState.IDLE:
                raise LocalProtocolError(f"Connect in state {self.state.value}")
            self._sessions = event.sessions
            self.state = LinkState.AWAIT_CHALLENGE
            return ff.encode_frame(ff.Hello(self.node_id, self.role, self.instance, self._nonce), self.epoch)
        if self.state is not LinkState.AWAIT_ADMISSION:
            raise LocalProtocolError(f"{type(event).__name__} in state {self.state.value}")
        if isinstance(event, Refuse):
            self._finish(event.why, event.reason)
            return ff.encode_frame(ff.Refused(event.reason), self.epoch)
        return self._admit(event.stream)

    def receive_data(self, data: bytes | str) -> None:
        """One forward WebSocket message. Ignored once the link ended."""
        if self.state is LinkState.CLOSED:
            return
        try:
            if not self._authenticated and len(data) > PRE_AUTH_MAX_FRAME:
                raise _End(EndReason.OVERSIZE, f"a {len(data)}-byte message before authentication "
                           f"(at most {PRE_AUTH_MAX_FRAME})")
            try:
                epoch, frame = ff.decode_frame(data)
            except ff.ForwardProtocolError as exc:
                raise _End(EndReason.UNKNOWN_FRAME, str(exc)) from None
            if isinstance(frame, ff.Refused):
                raise _End(EndReason.REFUSED_BY_PEER, f"{self._peer_name()} refused: {frame.reason}")
            if self.peer_node is None and isinstance(frame, ff.Hello | ff.Challenge):
                self.peer_node = frame.node  # names the peer in an epoch event already
            if self._authenticated:
                self._check_epoch(epoch, frame)
            self._frame_epoch = epoch  # the handshake's steps check it once the peer proved the secret
            self._handle(frame)
        except _End as end:
            if end.reply is not None:
                self._out.append(ff.encode_frame(ff.Refused(end.reply), self.epoch))
            self._finish(end.reason, end.detail)

    # --- internals ------------------------------------------------------------------------

    def _peer_name(self) -> str:
        return self.peer_node or "the peer"

    def _finish(self, reason: EndReason, detail: str) -> None:
        self.state = LinkState.CLOSED
        self.ended = LinkEnded(reason, detail)
        self._events.append(self.ended)

    def _check_epoch(self, epoch: int, frame: ff.Frame) -> None:
        if epoch == self.epoch:
            return
        if epoch < self.epoch:
            if isinstance(frame, ff.Hello):
                return  # a slave that never saw our epoch: it follows from the challenge on
            self._events.append(Fenced(epoch, self.epoch, self._peer_name()))
            raise _End(EndReason.FENCED, f"{self._peer_name()} sent a frame of epoch {epoch}, "
                       f"older than {self.epoch}", reply=f"fenced: epoch {epoch} is older than {self.epoch}")
        self._events.append(EpochRaised(self.epoch, epoch, self._peer_name()))
        if not self.initiator:
            raise _End(EndReason.NEWER_EPOCH, f"{self._peer_name()} knows epoch {epoch}, newer than "
                       f"this master's {self.epoch}: another master took over",
                       reply=f"this master's epoch {self.epoch} is older than {epoch}")
        self.epoch = epoch  # a slave follows the master's epoch

    def _handle(self, frame: ff.Frame) -> None:
        """Takes `frame` as the state says (_STEPS, at the end of the module) or ends the link."""
        step = _STEPS.get(self.state)
        if step is not None and isinstance(frame, step.takes):
            step.run(self, frame)
        elif self.state is LinkState.OPEN and isinstance(frame, ff.Beat):
            self._events.append(PeerIdle())
        else:
            raise _End(EndReason.WRONG_STATE, f"unexpected {type(frame).__name__} from {self._peer_name()} "
                       f"in state {self.state.value}")

    # acceptor

    def _hello(self, hello: ff.Hello) -> None:
        if hello.role is PeerRole.MASTER:
            raise _End(EndReason.WRONG_STATE, f"{hello.node!r} says hello as a master")
        self.peer_node, self.peer_role, self.peer_instance = hello.node, hello.role, hello.instance
        self._peer_nonce = hello.nonce
        mac = ff.master_mac(self.secret, hello.nonce, self._nonce)
        self._out.append(ff.encode_frame(ff.Challenge(self.node_id, self.instance, self._nonce, mac), self.epoch))
        self.state = LinkState.AWAIT_AUTH

    def _check_auth(self, auth: ff.Auth) -> None:
        assert self.peer_node is not None
        expected = ff.slave_mac(self.secret, self.peer_node, self._peer_nonce, self._nonce)
        if not ff.mac_ok(expected, auth.mac):
            raise _End(EndReason.BAD_MAC, f"{self.peer_node!r} holds another cluster secret than this master "
                       "(compare their vim.cluster.secret-file)",
                       reply="bad credentials: this node and the master hold different cluster secrets")
        if self.peer_node == self.node_id and self.peer_role is PeerRole.SLAVE:
            raise _End(EndReason.WRONG_NODE, f"a peer claims this master's own node id {self.node_id!r}",
                       reply=f"node id {self.node_id!r} is the master's own")
        self._check_epoch(self._frame_epoch, auth)  # proved: its epoch counts now
        self._authenticated = True
        self._auth = auth
        self.state = LinkState.AWAIT_SESSIONS

    def _take_sessions(self, frame: ff.Sessions) -> None:
        assert self._auth is not None and self.peer_node is not None and self.peer_role is not None
        self.state = LinkState.AWAIT_ADMISSION
        rows = [(int(r[0]), str(r[1]), str(r[2]), r[3]) for r in frame.sessions]
        self._events.append(PeerAuthenticated(self.peer_node, self.peer_role, self.peer_instance or "",
                                              self.epoch, self._auth.received, self._auth.base, rows))

    def _admit(self, stream: PeerStream[Tag]) -> bytes:
        assert self._auth is not None
        try:
            stream.window.rewind(self._auth.received)
        except OutOfOrder as exc:
            self._finish(EndReason.OUT_OF_ORDER, f"{self._peer_name()}: {exc}")
            return ff.encode_frame(ff.Refused(f"bad resend claim: {exc}"), self.epoch)
        self.stream = stream
        self.state = LinkState.OPEN
        self.sent_ack = -1
        return ff.encode_frame(ff.Welcome(stream.receiver.received), self.epoch)

    # initiator

    def _challenge(self, challenge: ff.Challenge) -> None:
        assert self.stream is not None
        self.peer_node, self.peer_instance = challenge.node, challenge.instance
        mac = ff.slave_mac(self.secret, self.node_id, self._nonce, challenge.nonce)
        if not ff.mac_ok(ff.master_mac(self.secret, self._nonce, challenge.nonce), challenge.mac):
            # Our proof still goes (nothing else: no sessions), so that the master sees a peer with
            # another secret and refuses it by name in its log, rather than a hang-up.
            self._out.append(ff.encode_frame(ff.Auth(mac, 0, 0), self.epoch))
            raise _End(EndReason.BAD_MAC, "this node and the master hold different cluster secrets "
                       "(compare their vim.cluster.secret-file)")
        if challenge.node == self.node_id or (self.expect_peer is not None and challenge.node != self.expect_peer):
            raise _End(EndReason.WRONG_NODE, f"the master is {challenge.node!r}, expected "
                       f"{self.expect_peer or 'another node than this one'!r}", reply="wrong node")
        if self._frame_epoch < self.epoch:  # a stale master: our proof carries the newer epoch to it
            self._out.append(ff.encode_frame(ff.Auth(mac, 0, 0), self.epoch))
        self._check_epoch(self._frame_epoch, challenge)  # proved: its epoch counts (fenced, or followed)
        self._authenticated = True
        if challenge.instance != self.stream.receiver.instance:  # a new master process: start over
            self.stream.new_peer_instance(challenge.instance)
        self._out.append(ff.encode_frame(ff.Auth(mac, self.stream.receiver.received,
                                                 self.stream.window.acked_upto), self.epoch))
        self._out.append(ff.encode_frame(ff.Sessions(list(self._sessions)), self.epoch))
        self._sessions = ()
        self.state = LinkState.AWAIT_WELCOME

    def _welcome(self, welcome: ff.Welcome) -> None:
        assert self.stream is not None and self.peer_node is not None
        try:
            self.stream.window.rewind(welcome.received)
        except OutOfOrder as exc:
            raise _End(EndReason.OUT_OF_ORDER, f"{self.peer_node}: {exc}") from None
        self.state = LinkState.OPEN
        self.sent_ack = -1
        self._events.append(LinkOpened(self.peer_node, self.peer_instance or "", self.epoch,
                                       self.stream.window.unsent()))

    # both, once open

    def _batch(self, batch: ff.Batch) -> None:
        stream = self.stream
        assert stream is not None
        receiver = stream.receiver
        packets = batch.packets
        if packets:
            first = batch.first
            skip = receiver.received + 1 - first
            if skip < 0:
                raise _End(EndReason.OUT_OF_ORDER, f"{self._peer_name()}: sequence gap: got {first} "
                           f"after {receiver.received}")
            if skip:
                self.duplicates += min(skip, len(packets))
            if skip < len(packets):
                new = packets[skip:] if skip else packets
                receiver.received = first + len(packets) - 1
                stream.acks.received = receiver.received
                self._events.append(PacketsReceived(first + skip, new))
        if batch.ack is not None:
            try:
                done = stream.window.ack(batch.ack)
            except OutOfOrder as exc:
                raise _End(EndReason.OUT_OF_ORDER, f"{self._peer_name()}: {exc}") from None
            if done:
                self._events.append(Acked(done))

    def _flush(self, limit: int) -> bytes:
        if self.state is not LinkState.OPEN:
            raise LocalProtocolError(f"a batch in state {self.state.value}")
        assert self.stream is not None
        ack = self.stream.ack_value()
        window = self.stream.window
        first, packets = window.take_batch(limit)
        data = ff.encode_frame(ff.Batch(ack, first, packets), self.epoch)
        # A batch over what the peer takes (MAX_FRAME: it would refuse it, and get it again at
        # every reconnect) is halved until it fits; the rest goes in the next flush. One packet
        # always fits: config.py bounds a message's size (vim.websocket.max-content).
        while len(data) > MAX_FRAME and len(packets) > 1:
            keep = len(packets) // 2
            window.unsend(len(packets) - keep)
            packets = packets[:keep]
            data = ff.encode_frame(ff.Batch(ack, first, packets), self.epoch)
        self.sent_ack = ack
        return data


class _Step(NamedTuple):
    takes: type[Any]  # the one kind of frame a state takes
    run: Callable[[ForwardConnection[Any], Any], None]


# The states of the handshake and of the open link as data (h11 keeps its transitions so): which
# frame each takes and what it does with it. An open link also takes beats (they only show the
# peer is alive); any other frame ends the link (WRONG_STATE).
_STEPS: dict[LinkState, _Step] = {
    LinkState.AWAIT_HELLO: _Step(ff.Hello, ForwardConnection._hello),  # acceptor
    LinkState.AWAIT_AUTH: _Step(ff.Auth, ForwardConnection._check_auth),
    LinkState.AWAIT_SESSIONS: _Step(ff.Sessions, ForwardConnection._take_sessions),
    LinkState.AWAIT_CHALLENGE: _Step(ff.Challenge, ForwardConnection._challenge),  # initiator
    LinkState.AWAIT_WELCOME: _Step(ff.Welcome, ForwardConnection._welcome),
    LinkState.OPEN: _Step(ff.Batch, ForwardConnection._batch),  # both
}
