"""Forward-channel frames and packets, and their MessagePack encoding (internal to the cluster:
nodes are upgraded together, so this wire format may change between releases).

A forward link is one WebSocket between a slave (or an operator tool) and the master, carrying
binary messages, one frame each. Every frame is a MessagePack array `[tag, epoch, *fields]`:
`epoch` is the sender's fencing epoch (an int, see forward_connection.py).

    HELLO     0  slave -> master  [node, role, instance, nonce]
    CHALLENGE 1  master -> slave  [node, instance, nonce, mac]   mac proves the master holds the secret
    AUTH      2  slave -> master  [mac, received, base]          mac proves the slave holds the secret
    SESSIONS  3  slave -> master  [[[user, session, client, uuid], ...]]  right after auth (the
                                  master caps frames at 4 KiB until the mac checked out)
    WELCOME   4  master -> slave  [received]
    REFUSED   5  both             [reason]
    BATCH     6  both             [ack, first_seq, [packet, ...]]  packets numbered first_seq, +1, ...
                                  ack is cumulative, may be null
    BEAT      7  both             [ts]

`instance` names one process run (a restart draws a new one); a slave's may end in
`+feature,...`: the packets it takes beyond the first release of this format (`features_of`).
Older masters compare instances as opaque strings, so the suffix changes nothing for them, and
a master sends such a packet (`CatchUp`: feature `catch-up`) only to slaves that name it, so an
older slave linked to a newer master during a rolling upgrade never gets a packet it would
drop its link over. The master's instance names what it takes the same way (`Leaving`:
feature `leaving`; a slave's `CatchUp`: feature `catch-up`), and a slave sends such a packet
only to a master that names it. `received` is the highest
sequence number the sender of that frame got from the peer's current instance: the peer resends
everything after it. `base` is the highest sequence number the slave no longer holds
(acknowledged): a master that has no receiver for the slave's instance (it restarted) starts one
there, since the slave's resend starts right after it.

Packets are plain tuples (NamedTuples, packed as MessagePack arrays as they are), the kind last:

    Deliver       [src, users, frame, exclude, ts, message_id, 0]  `frame` is the client frame
                  already encoded as JSON text (UTF-8 bytes): a text client gets it untouched;
                  or a list of 2..MAX_FRAMES_PER_DELIVER such frames for the same users, sent
                  in that order (message_id null): the receipts of one `received`, or a
                  slave's messages to one chat that joined while waiting to be sent
    Kick          [dst, user, session, code, notice, 1]           notice: JSON bytes or null
    SessionOpen   [user, session, client, uuid, 2]                slave -> master: route updates
    SessionClose  [user, session, 3]
    Presence      [[[user, online, node], ...], 4]                master -> slave
    CatchUp       [since, node, 5]                                master -> slave: `node`, a slave,
                  died or restarted, and may have taken packets it never relayed with it (its
                  outbox); re-deliver from the store what your sessions may have missed since
                  `since` (ms: when its link went down) before any packet after this one;
                  slave -> master: `node`, the sender, emptied the Delivers it held past
                  vim.cluster.forward-queue-bytes (node/forward_link.py): the master asks
                  every node to catch up since `since` (ms: when the oldest of them was
                  queued), as for a slave that died
    Leaving       [node, 6]                                       slave -> master: this process
                  stops and has queued everything it will (its sessions are gone, its store
                  writer idle): once the master has it, and nothing after it, the slave holds
                  nothing unrelayed, so its drop asks no node to catch up
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack


class ForwardProtocolError(Exception):
    """The peer sent something that is not the forward protocol: the link is dropped."""


class UnknownFrame(ForwardProtocolError):
    """Not a forward frame at all (not MessagePack, an unknown tag, a malformed field)."""


class PeerRole(enum.Enum):
    """Who is at one end of a forward link. Slaves and operator tools connect; the master accepts."""

    SLAVE = "slave"
    OPERATOR = "operator"
    MASTER = "master"


# ----------------------------------------------------------------------------- features

FEATURES_MARK = "+"
CATCH_UP_FEATURE = "catch-up"  # takes CatchUp packets (a slave from the master, a master from a slave)
LEAVING_FEATURE = "leaving"  # takes Leaving packets (a master)


def instance_with(token: str, *features: str) -> str:
    """A peer's instance naming the features it takes (see the module's docstring)."""
    return f"{token}{FEATURES_MARK}{','.join(features)}" if features else token


def features_of(instance: str) -> frozenset[str]:
    """The features a peer's instance names; none for an older node's (a bare token)."""
    _, mark, features = instance.partition(FEATURES_MARK)
    return frozenset(features.split(",")) if mark else frozenset()


# ----------------------------------------------------------------------------- packets

DELIVER, KICK, SESSION_OPEN, SESSION_CLOSE, PRESENCE, CATCH_UP, LEAVING = range(7)


MAX_FRAMES_PER_DELIVER = 100  # a Deliver's list of frames (so a forward frame stays far under MAX_FRAME)


class Deliver(NamedTuple):
    src: str  # the node the frame entered the cluster at
    users: Sequence[int]
    frame: bytes | list[bytes]  # the client frame {"code", "message"} as JSON text, UTF-8 encoded; or a list of them
    exclude: str | None  # a session id that must not get it (the sending session)
    ts: int  # ms when it entered the cluster (for the relay latency metric)
    message_id: int | None = None  # the frame's message id, if it is a `message` (replay dedupe)
    kind: int = DELIVER

    @property
    def frames(self) -> list[bytes]:
        """The client frames it carries, in order: its one frame, or its list."""
        return [self.frame] if isinstance(self.frame, bytes) else self.frame

    @property
    def size(self) -> int:
        """The bytes of the client frames it carries."""
        return len(self.frame) if isinstance(self.frame, bytes) else sum(map(len, self.frame))


class Kick(NamedTuple):
    dst: str  # the node holding the session
    user: int
    session: str | None  # None: every session of the user on dst
    code: int
    notice: bytes | None  # a client frame (JSON bytes) to send before closing
    kind: int = KICK


class SessionOpen(NamedTuple):
    user: int
    session: str
    client: str
    uuid: str | None
    kind: int = SESSION_OPEN


class SessionClose(NamedTuple):
    user: int
    session: str
    kind: int = SESSION_CLOSE


class Presence(NamedTuple):
    changes: Sequence[Sequence[Any]]  # [[user, online, node or None], ...]
    kind: int = PRESENCE


class CatchUp(NamedTuple):
    since: int  # ms: when the link of `node` went down (the receiver subtracts its catch-up margin)
    node: str  # the slave that died or restarted (to the master: the slave that emptied its queue)
    kind: int = CATCH_UP


class Leaving(NamedTuple):
    node: str  # the slave that stops, with everything it will send queued before this
    kind: int = LEAVING


Packet = Deliver | Kick | SessionOpen | SessionClose | Presence | CatchUp | Leaving
_PACKET_CLASSES: tuple[Any, ...] = (Deliver, Kick, SessionOpen, SessionClose, Presence, CatchUp, Leaving)
_PACKET_LENGTHS = tuple(len(cls._fields) for cls in _PACKET_CLASSES)


def _str_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _frame_list(frames: list[Any]) -> bool:
    return 1 < len(frames) <= MAX_FRAMES_PER_DELIVER and all(type(frame) is bytes for frame in frames)


def packet_from_wire(body: Any) -> Packet:
    """A packet from its decoded MessagePack array; raises UnknownFrame for anything else.
    Field types are checked (a peer that holds the secret may still be buggy), a Deliver's on a
    fast path: it is most of the traffic."""
    if type(body) is not list or not body:
        raise UnknownFrame(f"not a packet: {str(body)[:80]}")
    kind = body[-1]
    if kind == DELIVER and len(body) == 7 and type(kind) is int:
        src, users, frame, exclude, ts, mid, _ = body
        if (type(src) is str and type(users) is list and type(ts) is int
                and (exclude is None or type(exclude) is str) and (mid is None or type(mid) is int)
                and (type(frame) is bytes or (type(frame) is list and mid is None and _frame_list(frame)))):
            for user in users:
                if type(user) is not int:
                    break
            else:
                return tuple.__new__(Deliver, body)
        raise UnknownFrame(f"bad Deliver packet: {str(body)[:80]}")
    if type(kind) is not int or not 0 <= kind < len(_PACKET_CLASSES) or len(body) != _PACKET_LENGTHS[kind]:
        raise UnknownFrame(f"not a packet: {str(body)[:80]}")
    if kind == KICK:
        dst, user, session, code, notice, _ = body
        ok = (isinstance(dst, str) and type(user) is int and _str_or_none(session) and type(code) is int
              and (notice is None or isinstance(notice, bytes)))
    elif kind == SESSION_OPEN:
        user, session, client, uuid, _ = body
        ok = type(user) is int and isinstance(session, str) and isinstance(client, str) and _str_or_none(uuid)
    elif kind == SESSION_CLOSE:
        ok = type(body[0]) is int and isinstance(body[1], str)
    elif kind == CATCH_UP:
        ok = type(body[0]) is int and isinstance(body[1], str)
    elif kind == LEAVING:
        ok = isinstance(body[0], str)
    else:
        ok = isinstance(body[0], list | tuple) and all(
            isinstance(c, list | tuple) and len(c) == 3 and type(c[0]) is int and isinstance(c[1], bool)
            and _str_or_none(c[2]) for c in body[0])
    if not ok:
        raise UnknownFrame(f"bad {_PACKET_CLASSES[kind].__name__} packet: {str(body)[:80]}")
    packet: Packet = _PACKET_CLASSES[kind]._make(body)
    return packet


# ----------------------------------------------------------------------------- frames


class Hello(NamedTuple):
    node: str
    role: PeerRole
    instance: str
    nonce: str


class Challenge(NamedTuple):
    node: str
    instance: str
    nonce: str
    mac: str


class Auth(NamedTuple):
    mac: str
    received: int
    base: int = 0  # the sender's UnackedWindow.acked_upto: its packets after it are all still held


SessionRow = tuple[int, str, str, str | None]  # (user, session, client, uuid)


class Sessions(NamedTuple):
    sessions: Sequence[Sequence[Any]]  # [[user, session, client, uuid], ...]


class Welcome(NamedTuple):
    received: int


class Refused(NamedTuple):
    reason: str


class Batch(NamedTuple):
    ack: int | None
    first: int  # the sequence number of packets[0]; the others follow one by one
    packets: Sequence[Packet]


class Beat(NamedTuple):
    ts: int


Frame = Hello | Challenge | Auth | Sessions | Welcome | Refused | Batch | Beat
_FRAME_CLASSES: tuple[Any, ...] = (Hello, Challenge, Auth, Sessions, Welcome, Refused, Batch, Beat)
_TAGS: dict[type, int] = {cls: tag for tag, cls in enumerate(_FRAME_CLASSES)}
_ROLES = {role.value: role for role in PeerRole}
_packer = msgpack.Packer(use_bin_type=True)


def encode_frame(frame: Frame, epoch: int) -> bytes:
    """One frame as the bytes of one forward WebSocket message."""
    if type(frame) is Hello:
        return _packer.pack((0, epoch, frame.node, frame.role.value, frame.instance, frame.nonce))
    return _packer.pack((_TAGS[type(frame)], epoch, *frame))


def _int(value: Any) -> bool:
    return type(value) is int


def _check(frame: Frame) -> bool:
    """Field types of a decoded frame (a peer that holds the secret may still be buggy)."""
    match frame:
        case Hello(node, _, instance, nonce):
            return isinstance(node, str) and isinstance(instance, str) and isinstance(nonce, str)
        case Challenge(node, instance, nonce, mac):
            return all(isinstance(v, str) for v in (node, instance, nonce, mac))
        case Auth(mac, received, base):
            return isinstance(mac, str) and _int(received) and _int(base) and received >= 0 and base >= 0
        case Sessions(rows):
            return isinstance(rows, list | tuple) and all(
                isinstance(r, list | tuple) and len(r) == 4 and _int(r[0]) and isinstance(r[1], str)
                and isinstance(r[2], str) and _str_or_none(r[3]) for r in rows)
        case Welcome(received):
            return _int(received) and received >= 0
        case Refused(reason):
            return isinstance(reason, str)
        case Batch(ack, first, packets):
            return (ack is None or _int(ack)) and _int(first) and first >= 1 and isinstance(packets, list | tuple)
        case Beat(ts):
            return _int(ts)
    return False  # pragma: no cover - every frame class is matched above


def decode_frame(data: bytes | str) -> tuple[int, Frame]:
    """(the sender's epoch, the frame); raises UnknownFrame for anything that is not a forward frame."""
    if not isinstance(data, bytes):
        raise UnknownFrame("forward frames are binary")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise UnknownFrame(f"not MessagePack: {exc}") from None
    if not isinstance(body, list) or len(body) < 2:
        raise UnknownFrame("not a forward frame")
    tag, epoch = body[0], body[1]
    if not _int(tag) or not 0 <= tag < len(_FRAME_CLASSES) or not _int(epoch):
        raise UnknownFrame(f"not a forward frame (tag {str(tag)[:20]})")
    cls = _FRAME_CLASSES[tag]
    if len(body) - 2 != len(cls._fields):
        raise UnknownFrame(f"bad {cls.__name__} frame: {len(body) - 2} fields")
    if cls is Batch:
        frame: Frame = Batch(body[2], body[3], [packet_from_wire(p) for p in body[4]]
                             if isinstance(body[4], list) else body[4])
    elif cls is Hello:
        role = _ROLES.get(body[3]) if isinstance(body[3], str) else None
        if role is None:
            raise UnknownFrame(f"bad Hello frame: unknown role {str(body[3])[:20]}")
        frame = Hello(body[2], role, body[4], body[5])
    else:
        frame = cls._make(body[2:])
    if not _check(frame):
        raise UnknownFrame(f"bad {cls.__name__} frame: {str(body)[:80]}")
    return epoch, frame


# ----------------------------------------------------------------------------- HMAC auth


def master_mac(secret: bytes, slave_nonce: str, master_nonce: str) -> str:
    return hmac.new(secret, f"master|{slave_nonce}|{master_nonce}".encode(), hashlib.sha256).hexdigest()


def slave_mac(secret: bytes, node: str, slave_nonce: str, master_nonce: str) -> str:
    message = f"slave|{node}|{master_nonce}|{slave_nonce}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def mac_ok(expected: str, given: Any) -> bool:
    return isinstance(given, str) and hmac.compare_digest(expected, given)
