"""One async function per command kind; `dispatch` is the table from command type to handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ...protocol import frames as f
from . import account, conversations, groups, messages

if TYPE_CHECKING:
    from ..connection import Connection

Handler = Callable[["Connection", Any], Awaitable[None]]

HANDLERS: dict[type[f.Command], Handler] = {
    f.RawPing: account.raw_ping,
    f.Ping: account.ping,
    f.Register: account.register,
    f.Login: account.login,
    f.Ready: account.ready,
    f.SendMessage: messages.send,
    f.Received: messages.received,
    f.Read: conversations.read,
    f.Recall: messages.recall,
    f.History: conversations.history,
    f.Contacts: conversations.contacts,
    f.GroupCreate: groups.create,
    f.GroupAdd: groups.add,
    f.GroupRemove: groups.remove,
}


async def dispatch(conn: Connection, command: f.Command) -> None:
    await HANDLERS[type(command)](conn, command)
