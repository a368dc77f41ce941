"""Values shared by every layer: ids, chat kinds and the stored message.

Ids are decimal strings on the wire and ints inside (64-bit snowflakes, time-ordered).
"""

from __future__ import annotations

import enum
from typing import Any, NewType

import attrs
import msgspec

UserId = NewType("UserId", int)
GroupId = NewType("GroupId", int)
MessageId = NewType("MessageId", int)
MAX_ID = (1 << 63) - 1  # every id (user, group, message) is a positive signed 64-bit integer


def user_id_in(text: str) -> UserId | None:
    """`text` as a user id, if it is one (digits of a positive 64-bit integer: what every
    store holds); None otherwise (a username, or a number no store could hold)."""
    return UserId(int(text)) if text.isdigit() and 0 < int(text) <= MAX_ID else None
NodeId = NewType("NodeId", str)


class ChatType(enum.Enum):
    FRIEND = "friend"
    GROUP = "group"


class MessageType(enum.Enum):
    TEXT = "text"
    IMAGE = "image"
    FILE = "file"
    VOICE = "voice"
    VIDEO = "video"
    FORWARD = "forward"
    EVENT = "event"
    RECALLED = "recalled"  # what a recalled message becomes; never accepted from clients
    DELETED = "deleted"  # what an erased user's message becomes; never accepted from clients


def chat_key(chat_type: ChatType, from_id: int, chat_id: int) -> str:
    """The conversation key: both user ids (smaller first) for friends, the group id for groups."""
    if chat_type is ChatType.GROUP:
        return f"g{chat_id}"
    low, high = sorted((from_id, chat_id))
    return f"f{low}-{high}"


class Message(msgspec.Struct, frozen=True, gc=False):
    """A chat message as stored; `chat_id` is what the sender wrote (peer or group id).

    A msgspec Struct, not attrs: two are made per cross-node message (the send, the confirm's
    read), and its C constructor costs a tenth of a frozen attrs class's (issue 12). Frozen,
    compared and hashed by value, built by position or keyword, like the attrs classes;
    `msgspec.structs.replace` is its `attrs.evolve`. `gc=False`: it holds no cycles (str, int,
    enum members, and `extend`, a JSON object)."""

    id: MessageId
    cid: str
    from_id: UserId
    chat_id: int
    chat_type: ChatType
    message_type: MessageType
    content: str
    extend: dict[str, Any] | None
    timestamp: int  # server time, ms

    @property
    def chat_key(self) -> str:
        return chat_key(self.chat_type, self.from_id, self.chat_id)


@attrs.frozen
class User:
    id: UserId
    username: str
    name: str
    password_hash: str
    department_id: int | None = None


@attrs.frozen
class Department:
    """A department (V-IM's `dept` table): departments form a tree through `parent_id`."""

    id: int
    name: str
    parent_id: int | None = None


@attrs.frozen
class Group:
    id: GroupId
    name: str
    owner_id: UserId
    members: tuple[UserId, ...]


@attrs.frozen
class ReadCursor:
    chat_type: ChatType
    chat_id: int
    timestamp: int
