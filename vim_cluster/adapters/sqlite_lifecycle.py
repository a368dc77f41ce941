"""Retention, export and erasure on the SQLite message store (the lifecycle ports).

Rules:
- Every call is one short write transaction on at most `limit` rows, found through an index
  (the primary key, `pending_by_message`, `messages_by_sender`, `messages_by_recipient`), so
  a purge never scans the table and never holds the write lock for long.
- A batch is atomic: a crash rolls it back whole, and the next call finds the same rows again.
- A purge batch ends with a passive WAL checkpoint, so the checkpoint work of what it deleted
  is its own, not the next live write's.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..core.paging import merge_pages
from ..model import ChatType, Message, MessageId, MessageType, UserId
from .sqlite_base import SqliteDatabase
from .sqlite_rows import COLUMNS, _message

# Migration 2 of sqlite_messages: the indexes these queries use.
INDEXES = """
    CREATE INDEX IF NOT EXISTS pending_by_message ON pending (message_id);
    CREATE INDEX IF NOT EXISTS messages_by_sender ON messages (from_id, id);
    CREATE INDEX IF NOT EXISTS messages_by_recipient ON messages (chat_id, id)
"""


class SqliteLifecycle:
    """Mixed into SqliteMessages: MessageRetention, MessageExport and MessageErasure."""

    _db: SqliteDatabase

    def purge_messages(self, before: MessageId, limit: int) -> int:
        with self._db.transaction() as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM messages WHERE id < ? ORDER BY id LIMIT ?", (before, limit)
            )]
            if not ids:
                return 0
            low, high = ids[0], ids[-1]
            conn.execute("DELETE FROM pending WHERE message_id BETWEEN ? AND ?", (low, high))
            conn.execute("DELETE FROM messages WHERE id BETWEEN ? AND ?", (low, high))
        self._checkpoint()
        return len(ids)

    def _checkpoint(self) -> None:
        """Copies the WAL back into the database now, in the purge's time: otherwise the next
        live write's commit would pay for checkpointing the pages the purge dirtied."""
        with self._db.reading() as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def purge_pending(self, before: MessageId, limit: int) -> int:
        with self._db.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM pending WHERE (user_id, message_id) IN ("
                " SELECT user_id, message_id FROM pending INDEXED BY pending_by_message"
                " WHERE message_id < ? ORDER BY message_id LIMIT ?)",
                (before, limit),
            )
        self._checkpoint()
        return cursor.rowcount

    def drop_frame_logs(self, before_day: str) -> list[str]:
        return []  # SQLite keeps no raw frame log

    def messages_of_user(self, user_id: UserId, after: MessageId, limit: int) -> list[Message]:
        """Two index walks (sent: messages_by_sender; received: messages_by_recipient), each
        its next `limit` ids, merged (core/paging): no page reads more than 2 * limit rows."""
        while True:
            with self._db.reading() as conn:
                sent = _sent_rows(conn, user_id, after, limit)
                received = conn.execute(
                    f"SELECT {COLUMNS} FROM messages INDEXED BY messages_by_recipient"
                    " WHERE chat_id = ? AND id > ? AND chat_type = ? ORDER BY id LIMIT ?",
                    (user_id, after, ChatType.FRIEND.value, limit),
                ).fetchall()
            page, bound = merge_pages([[_message(r) for r in sent], [_message(r) for r in received]], limit)
            if page or bound is None:
                return page
            after = bound

    def sent_after(self, user_id: UserId, after: MessageId, limit: int) -> list[Message]:
        """The MessageStore port's (ports.py), by the messages_by_sender index."""
        with self._db.reading() as conn:
            return [_message(r) for r in _sent_rows(conn, user_id, after, limit)]

    def messages_of_chat(self, chat_key: str, after: MessageId, limit: int) -> list[Message]:
        with self._db.reading() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM messages WHERE chat_key = ? AND id > ? ORDER BY id LIMIT ?",
                (chat_key, after, limit),
            ).fetchall()
        return [_message(r) for r in rows]

    def erase_sent(self, user_id: UserId, after: MessageId, limit: int) -> list[MessageId]:
        with self._db.transaction() as conn:
            conn.execute("PRAGMA secure_delete = ON")  # the replaced content is zeroed (SqliteDatabase.wipe_wal)
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM messages WHERE from_id = ? AND id > ? ORDER BY id LIMIT ?",
                (user_id, after, limit),
            )]
            if not ids:
                return []
            conn.execute(
                "UPDATE messages SET message_type = ?, content = '', extend = NULL"
                " WHERE from_id = ? AND id BETWEEN ? AND ?",
                (MessageType.DELETED.value, user_id, ids[0], ids[-1]),
            )
        return [MessageId(i) for i in ids]

    def forget_user(self, user_id: UserId) -> int:
        """The erasure's last step on this store: then the WAL is emptied (SqliteDatabase.wipe_wal)."""
        with self._db.transaction() as conn:
            conn.execute("PRAGMA secure_delete = ON")
            removed = conn.execute("DELETE FROM pending WHERE user_id = ?", (user_id,)).rowcount
            conn.execute("DELETE FROM read_cursors WHERE user_id = ?", (user_id,))
        self._db.wipe_wal()
        return int(removed)


def _sent_rows(conn: sqlite3.Connection, user_id: UserId, after: MessageId, limit: int) -> list[Any]:
    """The rows of the next `limit` messages `user_id` sent after `after` (messages_by_sender)."""
    return conn.execute(
        f"SELECT {COLUMNS} FROM messages WHERE from_id = ? AND id > ? ORDER BY id LIMIT ?", (user_id, after, limit),
    ).fetchall()
