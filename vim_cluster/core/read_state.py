"""What a reader needs to draw history and contacts (pure): delivered/read of one's own
friend messages, read counts of group messages, and which chats to count unread in.

Rules:
- A friend message of mine is `read` when the peer's read cursor reached its timestamp,
  else `delivered` when it left the peer's offline set (the peer confirmed it with
  `received`), else `sent`.
- A group message's read count is the number of current members other than its sender
  whose read cursor on the group reached its timestamp.
- Unread: messages of others newer than my cursor on that chat (0 when I never read it).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..model import ChatType, Message, MessageId, ReadCursor, UserId, chat_key

SENT, DELIVERED, READ = "sent", "delivered", "read"


def friend_statuses(messages: Iterable[Message], me: int, undelivered: set[MessageId], peer_cursor: int) -> dict[int, str]:
    statuses: dict[int, str] = {}
    for m in messages:
        if m.from_id != me:
            continue
        if m.timestamp <= peer_cursor:
            statuses[m.id] = READ
        else:
            statuses[m.id] = SENT if m.id in undelivered else DELIVERED
    return statuses


def group_read_counts(messages: Iterable[Message], cursors: dict[UserId, int], members: set[int]) -> dict[int, int]:
    return {
        m.id: sum(1 for user, ts in cursors.items() if user != m.from_id and user in members and ts >= m.timestamp)
        for m in messages
    }


def unread_cursors(me: int, peers: Iterable[int], groups: Iterable[int], cursors: Iterable[ReadCursor]) -> dict[str, int]:
    """chat key -> my cursor there, for every friend chat with `peers` and every group."""
    mine = {(c.chat_type, c.chat_id): c.timestamp for c in cursors}
    wanted = {chat_key(ChatType.FRIEND, me, p): mine.get((ChatType.FRIEND, p), 0) for p in peers}
    wanted.update({chat_key(ChatType.GROUP, me, g): mine.get((ChatType.GROUP, g), 0) for g in groups})
    return wanted
