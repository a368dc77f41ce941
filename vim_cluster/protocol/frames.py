"""Typed client frames: commands (client -> node) and replies (node -> client).

Commands are what `codec.decode` produces; replies are what `codec.encode` consumes. Each reply
knows its wire code and its wire dict (`wire()`); ids become decimal strings there and nowhere
else.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from ..core.presence import Change
from ..errors import ErrorKind
from ..model import ChatType, Department, Group, Message, MessageType

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


def _with_rid(body: dict[str, Any], rid: str | None) -> dict[str, Any]:
    if rid is not None:
        body["rid"] = rid
    return body


@attrs.frozen
class RawPong(Reply):
    CODE = "pong"

    def wire(self) -> dict[str, Any]:
        return {}


@attrs.frozen
class Pong(Reply):
    CODE = "pong"
    ts: int
    rid: str | None = None

    def wire(self) -> dict[str, Any]:
        return _with_rid({"ts": self.ts}, self.rid)


@attrs.frozen
class ErrorReply(Reply):
    CODE = "error"
    kind: ErrorKind
    detail: str
    rid: str | None = None
    cid: str | None = None

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.kind.value, "detail": self.detail}
        if self.cid is not None:
            body["cid"] = self.cid
        return _with_rid(body, self.rid)


@attrs.frozen
class RegisterOk(Reply):
    CODE = "register-ok"
    user_id: int
    rid: str | None = None

    def wire(self) -> dict[str, Any]:
        return _with_rid({"userId": str(self.user_id)}, self.rid)


@attrs.frozen
class LoginOk(Reply):
    CODE = "login-ok"
    user_id: int
    token: str = attrs.field(repr=False)
    expires_at: int
    rid: str | None = None

    def wire(self) -> dict[str, Any]:
        body = {"userId": str(self.user_id), "token": self.token, "expiresAt": self.expires_at}
        return _with_rid(body, self.rid)


@attrs.frozen
class ReadyOk(Reply):
    CODE = "ready-ok"
    user_id: int
    node_id: str
    server_time: int
    rid: str | None = None

    def wire(self) -> dict[str, Any]:
        body = {"userId": str(self.user_id), "nodeId": self.node_id, "serverTime": self.server_time}
        return _with_rid(body, self.rid)


@attrs.frozen
class SyncDone(Reply):
    CODE = "sync-done"
    count: int
    rid: str | None = None

    def wire(self) -> dict[str, Any]:
        return _with_rid({"count": self.count}, self.rid)


@attrs.frozen
class Ack(Reply):
    CODE = "ack"
    cid: str
    id: int
    timestamp: int
    rid: str | None = None

    def wire(self) -> dict[str, Any]:
        return _with_rid({"cid": self.cid, "id": str(self.id), "timestamp": self.timestamp}, self.rid)


def message_wire(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "cid": message.cid,
        "chatId": str(message.chat_id),
        "type": message.chat_type.value,
        "messageType": message.message_type.value,
        "content": message.content,
        "extend": message.extend,
        "fromId": str(message.from_id),
        "timestamp": message.timestamp,
    }


@attrs.frozen
class MessageOut(Reply):
    CODE = "message"
    message: Message
    offline: bool = False

    def message_id(self) -> int | None:
        return self.message.id

    def wire(self) -> dict[str, Any]:
        body = message_wire(self.message)
        if self.offline:
            body["offline"] = True
        return body


@attrs.frozen
class Receipt(Reply):
    CODE = "receipt"
    id: int
    chat_id: int
    by: int

    def wire(self) -> dict[str, Any]:
        return {"id": str(self.id), "chatId": str(self.chat_id), "status": "delivered", "by": str(self.by)}


@attrs.frozen
class ReadOut(Reply):
    CODE = "read"
    chat_id: int
    chat_type: ChatType
    timestamp: int
    by: int
    rid: str | None = None

    def wire(self) -> dict[str, Any]:
        body = {
            "chatId": str(self.chat_id),
            "type": self.chat_type.value,
            "timestamp": self.timestamp,
            "by": str(self.by),
        }
        return _with_rid(body, self.rid)


@attrs.frozen
class RecallOut(Reply):
    CODE = "recall"
    id: int
    chat_id: int
    chat_type: ChatType
    by: int
    rid: str | None = None

    def wire(self) -> dict[str, Any]:
        body = {"id": str(self.id), "chatId": str(self.chat_id), "type": self.chat_type.value, "by": str(self.by)}
        return _with_rid(body, self.rid)


@attrs.frozen
class HistoryOut(Reply):
    CODE = "history"
    chat_id: int
    chat_type: ChatType
    messages: tuple[Message, ...]
    more: bool
    rid: str | None = None
    statuses: dict[int, str] = attrs.Factory(dict)  # friend chats: my messages' sent/delivered/read
    read_counts: dict[int, int] = attrs.Factory(dict)  # group chats: members who read each message

    def wire(self) -> dict[str, Any]:
        body = {
            "chatId": str(self.chat_id),
            "type": self.chat_type.value,
            "messages": [self._item(m) for m in self.messages],
            "more": self.more,
        }
        return _with_rid(body, self.rid)

    def _item(self, message: Message) -> dict[str, Any]:
        item = message_wire(message)
        if message.id in self.statuses:
            item["status"] = self.statuses[message.id]
        if message.id in self.read_counts:
            item["readCount"] = self.read_counts[message.id]
        return item


@attrs.frozen
class ContactUser:
    user_id: int
    name: str
    online: bool
    dept_id: int | None = None
    unread: int = 0  # messages from this user newer than the reader's cursor


@attrs.frozen
class ContactsOut(Reply):
    CODE = "contacts"
    users: tuple[ContactUser, ...]
    groups: tuple[Group, ...]
    rid: str | None = None
    departments: tuple[Department, ...] = ()
    group_unread: dict[int, int] = attrs.Factory(dict)  # group id -> unread messages
    members: dict[int, tuple[int, ...]] = attrs.Factory(dict)  # department id -> user ids

    def wire(self) -> dict[str, Any]:
        body = {
            "users": [_contact_wire(u) for u in self.users],
            "groups": [{**group_wire(g), "unread": self.group_unread.get(g.id, 0)} for g in self.groups],
            "departments": [
                {"deptId": str(d.id), "name": d.name,
                 "parentId": str(d.parent_id) if d.parent_id is not None else None,
                 "members": [str(m) for m in self.members.get(d.id, ())]}
                for d in self.departments
            ],
        }
        return _with_rid(body, self.rid)


def _contact_wire(u: ContactUser) -> dict[str, Any]:
    return {"userId": str(u.user_id), "name": u.name, "online": u.online,
            "deptId": str(u.dept_id) if u.dept_id is not None else None, "unread": u.unread}


def group_wire(group: Group) -> dict[str, Any]:
    return {
        "groupId": str(group.id),
        "name": group.name,
        "members": [str(m) for m in group.members],
        "owner": str(group.owner_id),
    }


@attrs.frozen
class GroupOk(Reply):
    CODE = "group-ok"
    group: Group
    rid: str | None = None

    def wire(self) -> dict[str, Any]:
        return _with_rid(group_wire(self.group), self.rid)


@attrs.frozen
class PresenceOut(Reply):
    """`{userId, online, nodeId?}` for one change; `{users: [{userId, online, nodeId?}, ...]}`
    for several announced at once (a coalesced window)."""

    CODE = "presence"
    changes: tuple[Change, ...]

    def wire(self) -> dict[str, Any]:
        items = [_presence_item(c) for c in self.changes]
        return items[0] if len(items) == 1 else {"users": items}


def _presence_item(change: Change) -> dict[str, Any]:
    item: dict[str, Any] = {"userId": str(change.user), "online": change.online}
    if change.node is not None:
        item["nodeId"] = change.node
    return item


@attrs.frozen
class OtherLogin(Reply):
    CODE = "other-login"
    uuid: str | None
    node_id: str

    def wire(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "nodeId": self.node_id}
