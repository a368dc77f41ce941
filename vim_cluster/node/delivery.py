"""Where frames go: this node's sessions and, through the cluster link, every other node's.

`Delivery.to_users` is the call handlers make (`to_users_in_order` for several frames to the
same users, which cross the cluster in one packet); it never blocks and never waits on the
network. `LocalDelivery` carries out what arrived over the forward channel; the cluster link
(SlaveLink or MasterRelay) is built on it first, then Delivery on both: nothing is patched in
after construction.

A forwarded client frame travels as the JSON text the sending node encoded once (shared with
its own text clients); the receiving node hands that text to its text clients untouched and
re-encodes it only for MessagePack clients (ForwardedFrame).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

import attrs
import structlog

from ..core import presence
from ..core.presence import Change
from ..errors import CloseCode
from ..protocol import forward_frames as ff
from ..protocol.codec import OutFrame, encode
from ..protocol.forward_frames import ForwardProtocolError, SessionRow
from ..protocol.frames import PresenceOut, RawReply, Reply
from ..tunables import DEFAULTS
from .local_sessions import LocalSessions, Session
from .metrics import NodeMetrics

log = structlog.get_logger()


class ClusterLink(Protocol):
    """The node's side of the forward channel (slave link or master relay). Never blocks."""

    def deliver(self, users: list[int], frames: Sequence[OutFrame], exclude: str | None) -> None:
        """`frames` (at most ff.MAX_FRAMES_PER_DELIVER), in order, to `users` on other nodes."""

    def kick(self, dst: str, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> None: ...

    def session_opened(self, session: Session) -> None: ...

    def session_closed(self, session: Session) -> None: ...

    async def routed(self, session: Session) -> None:
        """Returns once the master routes to `session` (or there is no link to wait for): what
        is stored for its user before that is in its offline replay, what after comes live."""

    def queue_depth(self) -> int: ...

    def healthy(self) -> bool: ...


class Unlinked:
    """The cluster link before the node's role gives it one (node/roles.py): this node's own
    traffic (Deliver and Kick packets) is kept, in order, for the link that takes over
    (`roles.hand_over`), never dropped: a node accepts clients before its link or relay is up.
    Sessions need no keeping: the new link reports them (handshake; a relay reads LocalSessions)."""

    def __init__(self, node_id: str, clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self.node_id = node_id
        self.clock_ms = clock_ms
        self.packets: list[ff.Packet] = []

    def deliver(self, users: list[int], frames: Sequence[OutFrame], exclude: str | None) -> None:
        self.packets.append(deliver_packet(self.node_id, users, frames, exclude, self.clock_ms()))

    def kick(self, dst: str, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> None:
        self.packets.append(kick_packet(dst, user, session, code, notice))

    def session_opened(self, session: Session) -> None:
        return None

    def session_closed(self, session: Session) -> None:
        return None

    async def routed(self, session: Session) -> None:
        return None

    def queue_depth(self) -> int:
        return len(self.packets)

    def healthy(self) -> bool:
        return False


# ----------------------------------------------------------------------------- pre-encoded frames

def frame_json(frame: OutFrame) -> bytes:
    """The client frame as JSON text (UTF-8), encoded once by the codec and shared with this
    node's own text clients: what a Deliver packet carries."""
    return frame.payload(False)


def deliver_body(frames: Sequence[OutFrame]) -> tuple[bytes | list[bytes], int | None]:
    """A Deliver's frame and message id: one frame's JSON and its message id, or the JSON of
    each of several frames (no message id)."""
    if len(frames) == 1:
        return frame_json(frames[0]), frames[0].reply.message_id()
    return [frame_json(frame) for frame in frames], None


def deliver_packet(src: str, users: list[int], frames: Sequence[OutFrame], exclude: str | None,
                   ts: int) -> ff.Deliver:
    """`frames` for `users` on other nodes (but session `exclude`), as node `src` forwards them at `ts`."""
    frame, message_id = deliver_body(frames)
    return ff.Deliver(src, users, frame, exclude, ts, message_id)


# A slave's Delivers to the same users join while they wait to be sent (SlaveLink.deliver): a
# group commit's messages from one sender to one chat cross the cluster as one packet.
# A joined packet's frames stay within MERGE_BYTES: a forward frame of link_max_batch (256)
# such packets, sent after an outage, stays at about half the 16 MiB a peer takes (MAX_FRAME).
MERGE_BYTES = 32 * 1024
MERGE_LOOKBACK = 16  # how many of the newest unsent packets a Deliver may join


def passes(new: ff.Deliver) -> Callable[[ff.Packet], bool]:
    """The order rule for `new` joining an earlier packet: it may go back past (overtake) only
    a Deliver for none of its users. So every device gets its frames in the order they were
    pushed (a sender's messages from two devices to one chat never swap), and a route update
    or a kick keeps its place. Its users' set is made only if a packet is to be passed."""
    users: frozenset[int] | None = None

    def can_pass(packet: ff.Packet) -> bool:
        nonlocal users
        if type(packet) is not ff.Deliver:
            return False
        if users is None:
            users = frozenset(new.users)
        return users.isdisjoint(packet.users)

    return can_pass


def merged_deliver(earlier: ff.Packet, new: ff.Packet) -> ff.Deliver | None:
    """`earlier` with `new`'s frames after its own, if both are Delivers from one node to the
    same users, excluding the same session, and the frames stay within MAX_FRAMES_PER_DELIVER
    and MERGE_BYTES; None otherwise. The joined packet keeps `earlier`'s time and carries no message
    id (its receiver reads a frame's id from the frame when it needs one: ForwardedReply)."""
    if type(earlier) is not ff.Deliver or type(new) is not ff.Deliver or earlier.exclude != new.exclude \
            or earlier.users != new.users or earlier.src != new.src:
        return None
    before, added = earlier.frames, new.frames
    if len(before) + len(added) > ff.MAX_FRAMES_PER_DELIVER \
            or sum(map(len, before)) + sum(map(len, added)) > MERGE_BYTES:
        return None
    return earlier._replace(frame=before + added, message_id=None)


def kick_packet(dst: str, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> ff.Kick:
    """Closes `user`'s `session` (None: every session) on node `dst` with `code`, after `notice` if any."""
    return ff.Kick(dst, user, session, int(code), frame_json(notice) if notice else None)


EARLY_KICKS = 1024  # kicks for sessions not (yet) held, kept for a session that is opening
UNKNOWN_ID = -1  # a forwarded frame's message id, not carried by its packet (a list of frames)


class ForwardedReply(Reply):
    """A client frame that arrived as JSON text; decoded only if something asks for its fields
    (a MessagePack client, the code, or the message id of a frame that came in a list)."""

    def __init__(self, text: bytes, message_id: int | None) -> None:
        self.text = text
        self._message_id = message_id
        self._object: dict[str, Any] | None = None

    def _decoded(self) -> dict[str, Any]:
        if self._object is None:
            try:
                obj = json.loads(self.text)
            except ValueError as exc:
                raise ForwardProtocolError(f"a forwarded frame is not JSON: {exc}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("message"), dict):
                raise ForwardProtocolError("a forwarded frame is not a {code, message} object")
            self._object = obj
        return self._object

    @property
    def code(self) -> str:
        return str(self._decoded()["code"])

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = self._decoded()["message"]
        return body

    def message_id(self) -> int | None:
        """The packet's message id; for a frame that came in a list, read from the frame (only
        an offline replay's dedupe asks: node/offline_replay.py)."""
        if self._message_id == UNKNOWN_ID:
            try:
                self._message_id = RawReply(self._decoded()).message_id()
            except (ForwardProtocolError, KeyError, TypeError, ValueError) as exc:
                log.warning("forwarded_frame_without_id", error=str(exc), size=len(self.text))  # not its content
                self._message_id = None  # delivered as it is, without the replay's dedupe
        return self._message_id


class ForwardedFrame(OutFrame):
    """An OutFrame whose text form is the JSON that came over the forward channel, as it is.

    It overrides `payload(binary)`, what a client connection writes (OutFrame's `encoded`
    derives its str from it when asked), so that the text is never re-encoded."""

    __slots__ = ("_forwarded_json", "_packed")

    def __init__(self, text: bytes, message_id: int | None = None) -> None:
        super().__init__(ForwardedReply(text, message_id))
        self._forwarded_json = text
        self._packed: bytes | None = None

    def payload(self, binary: bool) -> bytes:
        """The frame's bytes: the forwarded JSON untouched, or MessagePack (made once)."""
        if not binary:
            return self._forwarded_json
        if self._packed is None:
            packed = encode(self.reply, True)  # MessagePack clients: decoded and re-encoded once
            self._packed = packed if isinstance(packed, bytes) else packed.encode()
        return self._packed

    def wire_object(self) -> dict[str, Any]:
        reply = self.reply
        assert isinstance(reply, ForwardedReply)
        return {"code": reply.code, "message": reply.wire()}


# ----------------------------------------------------------------------------- delivery


@attrs.define
class LocalDelivery:
    """This node's sessions, as the forward channel reaches them."""

    node_id: str
    local_sessions: LocalSessions
    metrics: NodeMetrics
    # Called with a user id when an operator deleted that account (kick code 4006), so the
    # node stops trusting its cache of existing users for it.
    forget_user: Callable[[int], None] = lambda user: None
    presence_chunk: int = DEFAULTS.presence_chunk  # changes in one presence frame (Tunables)
    # Kicks that named a session this node does not hold: most for sessions already closed,
    # some for one still opening here (another node read its route before it joined
    # LocalSessions), which takes its kick once it joins (Connection.open_session). The newest
    # EARLY_KICKS are kept.
    early_kicks: dict[str, tuple[CloseCode, OutFrame | None]] = attrs.Factory(dict)

    def sessions(self) -> list[SessionRow]:
        """Every local session as (user, session, client, uuid): what a slave reports."""
        return [(s.user_id, s.id, s.client, s.uuid) for u in self.local_sessions.users() for s in self.local_sessions.sessions(u)]

    def kick_local(self, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> int:
        kicked = 0
        for local in self.local_sessions.sessions(user):
            if session is None or local.id == session:
                local.kick(code, CloseCode(code).name.lower().replace("_", "-"), notice)
                kicked += 1
        if session is not None and not kicked:
            self.early_kicks[session] = (code, notice)
            if len(self.early_kicks) > EARLY_KICKS:
                del self.early_kicks[next(iter(self.early_kicks))]
        return kicked

    def take_early_kick(self, session: Session) -> bool:
        """Applies a kick that came for `session` before it joined LocalSessions; whether one had."""
        early = self.early_kicks.pop(session.id, None)
        if early is None:
            return False
        code, notice = early
        session.kick(code, CloseCode(code).name.lower().replace("_", "-"), notice)
        return True

    def apply_deliver(self, users: Sequence[int], frame: bytes | list[bytes], message_id: int | None,
                      exclude: str | None, ts: int, now_ms: int) -> None:
        """A Deliver packet: `frame` is the client frame's JSON text, or a list of them (in order).
        A packet none of whose users has a session here (on the master, most of what it relays)
        costs nothing more, and only a frame delivered here counts as a relay latency."""
        if not self.local_sessions.has_any(users):
            return
        latency = max(0, now_ms - ts) / 1000
        # A list's frames carry no message id in the packet (merged_deliver): each reads its own.
        texts, message_id = ((frame,), message_id) if isinstance(frame, bytes) else (frame, UNKNOWN_ID)
        for text in texts:
            delivered = self.local_sessions.deliver(users, ForwardedFrame(text, message_id), exclude=exclude)
            if delivered:
                self.metrics.frames_out.inc(delivered)
                self.metrics.relay_delivered(latency)

    async def room_for(self, packet: ff.Deliver) -> None:
        """Returns once every session here that `packet` goes to has room for its frames in
        its send queue (LocalSessions.room); the caller bounds the wait."""
        if not self.local_sessions.has_any(packet.users):
            return
        await self.local_sessions.room(packet.users, len(packet.frames), packet.size, packet.exclude)

    def presence_local(self, changes: list[Change]) -> int:
        """Announce presence changes to every local session that asked for `contacts` (the
        snapshot presence keeps up to date); returns the frames queued."""
        queued = 0
        for chunk in presence.chunks(changes, self.presence_chunk):
            queued += self.local_sessions.deliver_to_presence_watchers(OutFrame(PresenceOut(chunk)))
        self.metrics.frames_out.inc(queued)
        self.metrics.presence_frames.inc(queued)
        return queued

    def apply_presence(self, changes: Sequence[Sequence[Any]]) -> int:
        """A `presence` packet from the master (fields checked by the frame decoder)."""
        parsed = [Change(u, online, node) for u, online, node in changes]
        return self.presence_local(parsed)

    def apply_kick(self, user: int, session: str | None, code: int, notice: bytes | None) -> None:
        try:
            close_code = CloseCode(code)
        except ValueError:
            raise ForwardProtocolError(f"kick with an unknown close code {code}") from None
        frame = ForwardedFrame(notice) if notice else None
        if close_code is CloseCode.ACCOUNT_DELETED:
            self.forget_user(user)
        self.kick_local(user, session, close_code, frame)


@attrs.define
class Delivery:
    """What handlers call: local sessions first, then the cluster link (given at construction)."""

    local: LocalDelivery
    # Until the node's role sets its link: kept for it (Unlinked).
    cluster: ClusterLink = attrs.Factory(lambda self: Unlinked(self.local.node_id), takes_self=True)

    def to_users(self, users: Collection[int], reply: Reply, exclude: str | None = None) -> None:
        self.to_users_in_order(users, (reply,), exclude)

    def to_users_in_order(self, users: Collection[int], replies: Sequence[Reply], exclude: str | None = None) -> None:
        """Each of `replies`, in order, to every session of `users` (but `exclude`): across the
        cluster in one Deliver packet per ff.MAX_FRAMES_PER_DELIVER of them."""
        frames = [OutFrame(reply) for reply in replies]
        deliver = self.local.local_sessions.deliver
        for frame in frames:
            self.local.metrics.frames_out.inc(deliver(users, frame, exclude=exclude))
        for start in range(0, len(frames), ff.MAX_FRAMES_PER_DELIVER):
            self.cluster.deliver(list(users), frames[start:start + ff.MAX_FRAMES_PER_DELIVER], exclude)

    def kick(self, node: str, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> None:
        if node == self.local.node_id:
            self.local.kick_local(user, session, code, notice)
        else:
            self.cluster.kick(node, user, session, code, notice)

    def kick_local(self, user: int, session: str | None, code: CloseCode, notice: OutFrame | None) -> int:
        return self.local.kick_local(user, session, code, notice)
