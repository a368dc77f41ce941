"""Typed client frames: commands (client -> node) and replies (node -> client).

Commands are what `codec.decode` produces; replies are what `codec.encode` consumes. Each reply
is declared once (`@wire.reply(code)` over `@attrs.frozen`): its fields' annotations say their
wire names and conversions, and `wire()` (the frame's `message` object) is generated from them
(see `wire`). Ids become decimal
strings there and nowhere else; `rid` is written last and only when set.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import attrs

from ..core.presence import Change
from ..errors import ErrorKind
from ..model import ChatType, Department, Group, Message, MessageType
from .wire import (
    ENUM,
    ID,
    IDS,
    OMIT_FALSY,
    OMIT_NONE,
    OPT_ID,
    Const,
    FromFrame,
    Local,
    Name,
    Spread,
    reply,
)

# ---------------------------------------------------------------- commands (client -> node)


@attrs.frozen
class Command:
    rid: str | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class RawPing(Command):
    """The bare text frame `ping` (V-IM); answered with the bare text frame `pong`."""


@attrs.frozen
class Ping(Command):
    pass


@attrs.frozen
class Register(Command):
    username: str
    password: str = attrs.field(repr=False)
    name: str | None


@attrs.frozen
class Login(Command):
    username: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class Ready(Command):
    token: str | None = attrs.field(repr=False)
    client: str
    uuid: str | None


@attrs.frozen
class SendMessage(Command):
    cid: str
    chat_id: int
    chat_type: ChatType
    message_type: MessageType
    content: str
    extend: dict[str, Any] | None


@attrs.frozen
class Received(Command):
    ids: tuple[int, ...]


@attrs.frozen
class Read(Command):
    chat_id: int
    chat_type: ChatType
    timestamp: int


@attrs.frozen
class Recall(Command):
    id: int


@attrs.frozen
class History(Command):
    chat_id: int
    chat_type: ChatType
    before: int | None
    limit: int


@attrs.frozen
class Contacts(Command):
    pass


@attrs.frozen
class GroupCreate(Command):
    name: str
    members: tuple[int, ...]


@attrs.frozen
class GroupAdd(Command):
    group_id: int
    members: tuple[int, ...]


@attrs.frozen
class GroupRemove(Command):
    group_id: int
    members: tuple[int, ...]


# ---------------------------------------------------------------- replies (node -> client)


class Reply:
    CODE: ClassVar[str]

    @property
    def code(self) -> str:
        return self.CODE

    def wire(self) -> dict[str, Any]:
        raise NotImplementedError

    def message_id(self) -> int | None:
        """The id of the chat message this frame carries, if it is a `message` frame."""
        return None


@attrs.frozen
class RawReply(Reply):
    """A frame that arrived over the forward channel, already in wire form."""

    frame: dict[str, Any]  # {"code": ..., "message": {...}}

    @property
    def code(self) -> str:
        return str(self.frame["code"])

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = self.frame["message"]
        return body

    def message_id(self) -> int | None:
        if self.frame["code"] != "message":
            return None
        return int(self.frame["message"]["id"])


@reply("pong")
@attrs.frozen
class RawPong(Reply):
    """The bare text frame `pong` (the codec writes it as such, not as an object)."""


@reply("pong")
@attrs.frozen
class Pong(Reply):
    ts: int
    rid: str | None = None


@reply("error")
@attrs.frozen
class ErrorReply(Reply):
    kind: Annotated[ErrorKind, ENUM, Name("error")]
    detail: str
    rid: str | None = None
    cid: Annotated[str | None, OMIT_NONE] = None


@reply("register-ok")
@attrs.frozen
class RegisterOk(Reply):
    user_id: Annotated[int, ID]
    rid: str | None = None


@reply("login-ok")
@attrs.frozen
class LoginOk(Reply):
    user_id: Annotated[int, ID]
    token: str = attrs.field(repr=False)
    expires_at: int
    rid: str | None = None


@reply("ready-ok")
@attrs.frozen
class ReadyOk(Reply):
    user_id: Annotated[int, ID]
    node_id: str
    server_time: int
    recall_window_ms: Annotated[int | None, OMIT_NONE] = None  # vim.message.recall-window (an extension)
    rid: str | None = None


@reply("sync-done")
@attrs.frozen
class SyncDone(Reply):
    count: int
    rid: str | None = None


@reply("ack")
@attrs.frozen
class Ack(Reply):
    cid: str
    id: Annotated[int, ID]
    timestamp: int
    rid: str | None = None


def message_wire(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "cid": message.cid,
        "chatId": str(message.chat_id),
        "type": message.chat_type._value_,
        "messageType": message.message_type._value_,
        "content": message.content,
        "extend": message.extend,
        "fromId": str(message.from_id),
        "timestamp": message.timestamp,
    }


@reply("message")
@attrs.frozen
class MessageOut(Reply):
    message: Annotated[Message, Spread(message_wire)]
    offline: Annotated[bool, OMIT_FALSY] = False

    def message_id(self) -> int | None:
        return self.message.id


@reply("receipt")
@attrs.frozen
class Receipt(Reply):
    id: Annotated[int, ID]
    chat_id: Annotated[int, ID]
    status: Annotated[str, Const] = attrs.field(init=False, default="delivered")
    by: Annotated[int, ID]


@reply("read")
@attrs.frozen
class ReadOut(Reply):
    chat_id: Annotated[int, ID]
    chat_type: Annotated[ChatType, ENUM, Name("type")]
    timestamp: int
    by: Annotated[int, ID]
    rid: str | None = None


@reply("recall")
@attrs.frozen
class RecallOut(Reply):
    id: Annotated[int, ID]
    chat_id: Annotated[int, ID]
    chat_type: Annotated[ChatType, ENUM, Name("type")]
    by: Annotated[int, ID]
    rid: str | None = None


def _history_items(frame: HistoryOut) -> list[dict[str, Any]]:
    items = []
    for message in frame.messages:
        item = message_wire(message)
        if message.id in frame.statuses:
            item["status"] = frame.statuses[message.id]
        if message.id in frame.read_counts:
            item["readCount"] = frame.read_counts[message.id]
        items.append(item)
    return items


@reply("history")
@attrs.frozen
class HistoryOut(Reply):
    chat_id: Annotated[int, ID]
    chat_type: Annotated[ChatType, ENUM, Name("type")]
    messages: Annotated[tuple[Message, ...], FromFrame(_history_items)]
    more: bool
    rid: str | None = None
    # friend chats: my messages' sent/delivered/read
    statuses: Annotated[dict[int, str], Local] = attrs.Factory(dict)
    # group chats: members who read each message
    read_counts: Annotated[dict[int, int], Local] = attrs.Factory(dict)


@attrs.frozen
class ContactUser:
    user_id: int
    name: str
    online: bool
    dept_id: int | None = None
    unread: int = 0  # messages from this user newer than the reader's cursor


def _contact_wire(u: ContactUser) -> dict[str, Any]:
    return {"userId": str(u.user_id), "name": u.name, "online": u.online,
            "deptId": OPT_ID(u.dept_id), "unread": u.unread}


def group_wire(group: Group) -> dict[str, Any]:
    return {
        "groupId": str(group.id),
        "name": group.name,
        "members": [str(m) for m in group.members],
        "owner": str(group.owner_id),
    }


def _contact_users(users: tuple[ContactUser, ...]) -> list[dict[str, Any]]:
    return [_contact_wire(u) for u in users]


def _contact_groups(frame: ContactsOut) -> list[dict[str, Any]]:
    return [{**group_wire(g), "unread": frame.group_unread.get(g.id, 0)} for g in frame.groups]


def _departments(frame: ContactsOut) -> list[dict[str, Any]]:
    return [{"deptId": str(d.id), "name": d.name, "parentId": OPT_ID(d.parent_id),
             "members": IDS(frame.members.get(d.id, ()))} for d in frame.departments]


@reply("contacts")
@attrs.frozen
class ContactsOut(Reply):
    users: Annotated[tuple[ContactUser, ...], _contact_users]
    groups: Annotated[tuple[Group, ...], FromFrame(_contact_groups)]
    rid: str | None = None
    departments: Annotated[tuple[Department, ...], FromFrame(_departments)] = ()
    group_unread: Annotated[dict[int, int], Local] = attrs.Factory(dict)  # group id -> unread messages
    members: Annotated[dict[int, tuple[int, ...]], Local] = attrs.Factory(dict)  # department id -> user ids


@reply("group-ok")
@attrs.frozen
class GroupOk(Reply):
    group: Annotated[Group, Spread(group_wire)]
    rid: str | None = None


def _presence_item(change: Change) -> dict[str, Any]:
    item: dict[str, Any] = {"userId": str(change.user), "online": change.online}
    if change.node is not None:
        item["nodeId"] = change.node
    return item


def _presence_body(changes: tuple[Change, ...]) -> dict[str, Any]:
    items = [_presence_item(c) for c in changes]
    return items[0] if len(items) == 1 else {"users": items}


@reply("presence")
@attrs.frozen
class PresenceOut(Reply):
    """`{userId, online, nodeId?}` for one change; `{users: [{userId, online, nodeId?}, ...]}`
    for several announced at once (a coalesced window)."""

    changes: Annotated[tuple[Change, ...], Spread(_presence_body)]


@reply("other-login")
@attrs.frozen
class OtherLogin(Reply):
    uuid: str | None
    node_id: str
