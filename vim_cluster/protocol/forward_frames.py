"""Forward-channel frames and packets, and their MessagePack encoding.

A forward link is one WebSocket between a slave (or an operator tool) and the master, carrying
binary frames. Each frame is a MessagePack map with a type tag "t":

    hello     slave -> master   {node, role, epoch, nonce}
    challenge master -> slave   {node, epoch, nonce, mac, fence} mac proves the master holds the secret
    auth      slave -> master   {mac, received, sessions, base} mac proves the slave holds the secret
    sessions  slave -> master   {sessions}   right after auth: the slave's sessions, [[user,
                                session, client, uuid], ...] (auth's own list stays empty: the
                                master caps frames small until the mac checked out)
    welcome   master -> slave   {received}
    refused   master -> slave   {reason}
    batch     both              {items: [[seq, packet], ...], ack, fence}   ack is cumulative, may be null
    beat      both              {ts, fence}

`fence` is the fencing epoch of the master the link belongs to (core/mastership.py): the master
stamps its own, a slave the one its master's challenge named; a frame of an older epoch than
the receiver knows is refused (the link is dropped).

`received` is the highest sequence number the sender of that frame got from the peer's current
epoch: the peer resends everything after it. `base` is the highest sequence number the slave
no longer holds (acknowledged): a master that has no Inbox for the slave's epoch (it restarted)
starts one there, since the slave's resend starts right after it. Packets (the application payload, V-IM's
ForwardMessage in spirit) are maps with a kind "k":

    deliver       {src, users, frame, exclude, ts}   a client frame for the users' sessions
    kick          {dst, user, session, code, notice} close one session (other-login, operator)
    session-open  {user, session, client, uuid}      slave -> master: route table updates
    session-close {user, session}
    presence      {changes: [[user, online, node], ...]}  master -> slave: coalesced presence
                                                          changes for every local session
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import attrs
import msgpack


class ForwardProtocolError(Exception):
    """The peer sent something that is not the forward protocol: the link is dropped."""


# ----------------------------------------------------------------------------- packets


@attrs.frozen
class Deliver:
    src: str  # the node the frame entered the cluster at
    users: tuple[int, ...]
    frame: dict[str, Any]  # {"code": ..., "message": {...}}: the client frame to deliver
    exclude: str | None  # a session id that must not get it (the sending session)
    ts: int  # ms when it entered the cluster (for the relay latency metric)


@attrs.frozen
class Kick:
    dst: str  # the node holding the session
    user: int
    session: str | None  # None: every session of the user on dst
    code: int
    notice: dict[str, Any] | None  # a client frame to send before closing


@attrs.frozen
class SessionOpen:
    user: int
    session: str
    client: str
    uuid: str | None


@attrs.frozen
class SessionClose:
    user: int
    session: str


@attrs.frozen
class Presence:
    changes: list[list[Any]]  # [[user, online, node or None], ...]


Packet = Deliver | Kick | SessionOpen | SessionClose | Presence

_PACKETS: dict[str, type] = {
    "deliver": Deliver,
    "kick": Kick,
    "session-open": SessionOpen,
    "session-close": SessionClose,
    "presence": Presence,
}
_KINDS = {cls: kind for kind, cls in _PACKETS.items()}


def packet_to_wire(packet: Packet) -> dict[str, Any]:
    body = attrs.asdict(packet, recurse=False)
    body["k"] = _KINDS[type(packet)]
    if "users" in body:
        body["users"] = list(body["users"])
    return body


def packet_from_wire(body: Any) -> Packet:
    if not isinstance(body, dict) or body.get("k") not in _PACKETS:
        raise ForwardProtocolError(f"not a packet: {str(body)[:80]}")
    cls = _PACKETS[body.pop("k")]
    try:
        if cls is Deliver:
            body["users"] = tuple(int(u) for u in body["users"])
        packet: Packet = cls(**body)
    except (TypeError, ValueError, KeyError) as exc:
        raise ForwardProtocolError(f"bad {cls.__name__} packet: {exc}") from None
    return packet


# ----------------------------------------------------------------------------- frames


@attrs.frozen
class Hello:
    node: str
    role: str  # "slave" or "operator"
    epoch: str
    nonce: str


@attrs.frozen
class Challenge:
    node: str
    epoch: str
    nonce: str
    mac: str
    fence: int = 0  # the master's fencing epoch


@attrs.frozen
class Auth:
    mac: str
    received: int
    sessions: list[list[Any]]  # [[user, session, client, uuid], ...]
    base: int = 0  # the sender's Outbox.acked_upto: its packets after it are all still held


@attrs.frozen
class Sessions:
    sessions: list[list[Any]]  # [[user, session, client, uuid], ...]


@attrs.frozen
class Welcome:
    received: int


@attrs.frozen
class Refused:
    reason: str


@attrs.frozen
class Batch:
    items: list[tuple[int, Packet]]
    ack: int | None
    fence: int = 0


@attrs.frozen
class Beat:
    ts: int
    fence: int = 0


Frame = Hello | Challenge | Auth | Sessions | Welcome | Refused | Batch | Beat
_FRAMES: dict[str, type] = {
    "hello": Hello,
    "challenge": Challenge,
    "auth": Auth,
    "sessions": Sessions,
    "welcome": Welcome,
    "refused": Refused,
    "batch": Batch,
    "beat": Beat,
}
_TAGS = {cls: tag for tag, cls in _FRAMES.items()}


def encode_frame(frame: Frame) -> bytes:
    if isinstance(frame, Batch):
        body: dict[str, Any] = {
            "items": [[seq, packet_to_wire(p)] for seq, p in frame.items],
            "ack": frame.ack,
            "fence": frame.fence,
        }
    else:
        body = attrs.asdict(frame, recurse=False)
    body["t"] = _TAGS[type(frame)]
    return msgpack.packb(body, use_bin_type=True)


def decode_frame(data: bytes | str) -> Frame:
    """Raises ForwardProtocolError for anything that is not a forward frame."""
    if not isinstance(data, bytes):
        raise ForwardProtocolError("forward frames are binary")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ForwardProtocolError(f"not MessagePack: {exc}") from None
    if not isinstance(body, dict) or body.get("t") not in _FRAMES:
        raise ForwardProtocolError("not a forward frame")
    cls = _FRAMES[body.pop("t")]
    try:
        if cls is Batch:
            items = [(int(seq), packet_from_wire(p)) for seq, p in body["items"]]
            return Batch(items, body.get("ack"), int(body.get("fence", 0)))
        frame: Frame = cls(**body)
    except (TypeError, ValueError, KeyError) as exc:
        raise ForwardProtocolError(f"bad {cls.__name__} frame: {exc}") from None
    return frame


# ----------------------------------------------------------------------------- HMAC auth


def master_mac(secret: bytes, slave_nonce: str, master_nonce: str) -> str:
    return hmac.new(secret, f"master|{slave_nonce}|{master_nonce}".encode(), hashlib.sha256).hexdigest()


def slave_mac(secret: bytes, node: str, slave_nonce: str, master_nonce: str) -> str:
    message = f"slave|{node}|{master_nonce}|{slave_nonce}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def mac_ok(expected: str, given: Any) -> bool:
    return isinstance(given, str) and hmac.compare_digest(expected, given)
