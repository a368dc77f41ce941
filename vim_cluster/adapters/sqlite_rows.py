"""How a row of the SQLite `messages` table becomes a Message (shared by the store and its
lifecycle queries)."""

from __future__ import annotations

import json

from ..model import ChatType, Message, MessageId, MessageType, UserId

COLUMNS = "id, cid, from_id, chat_id, chat_type, message_type, content, extend, timestamp"
M_COLUMNS = ", ".join(f"m.{c.strip()}" for c in COLUMNS.split(","))


def _message(row: tuple) -> Message:
    return Message(
        id=MessageId(row[0]),
        cid=row[1],
        from_id=UserId(row[2]),
        chat_id=row[3],
        chat_type=ChatType(row[4]),
        message_type=MessageType(row[5]),
        content=row[6],
        extend=json.loads(row[7]) if row[7] is not None else None,
        timestamp=row[8],
    )
