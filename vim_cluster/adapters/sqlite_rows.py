"""How a row of the SQLite `messages` table becomes a Message (shared by the store and its
lifecycle queries)."""

from __future__ import annotations

import json

from ..model import ChatType, Message, MessageId, MessageType, UserId

COLUMNS = "id, cid, from_id, chat_id, chat_type, message_type, content, extend, timestamp"
M_COLUMNS = ", ".join(f"m.{c.strip()}" for c in COLUMNS.split(","))


_CHAT_TYPES = {t.value: t for t in ChatType}
_MESSAGE_TYPES = {t.value: t for t in MessageType}


def _message(row: tuple) -> Message:
    """One row (COLUMNS); the enums by lookup, or by their constructor (which raises) for a
    value that is none of theirs. A recalled message has no extend, also when a node of an earlier
    release recalled it (it emptied the content only: docs/operations.md, Upgrading)."""
    chat_type, extend = row[4], row[7]
    message_type = _MESSAGE_TYPES.get(row[5]) or MessageType(row[5])
    return Message(
        MessageId(row[0]),
        row[1],
        UserId(row[2]),
        row[3],
        _CHAT_TYPES.get(chat_type) or ChatType(chat_type),
        message_type,
        row[6],
        json.loads(extend) if extend is not None and message_type is not MessageType.RECALLED else None,
        row[8],
    )
