"""The MessageStore port on SQLite: messages, offline sets and read cursors."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from ..errors import NotFound
from ..model import ChatType, GroupId, Message, MessageId, MessageType, ReadCursor, UserId
from ..ports import Confirm, NewMessage, Saved
from .sqlite_base import SqliteDatabase, WouldWait
from .sqlite_lifecycle import INDEXES, SqliteLifecycle
from .sqlite_rows import COLUMNS, M_COLUMNS, _message

INSERT_MESSAGE = f"INSERT OR IGNORE INTO messages ({COLUMNS}, chat_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_PENDING = "INSERT OR IGNORE INTO pending (user_id, message_id) VALUES (?, ?)"

MIGRATIONS = [
    """
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        cid TEXT NOT NULL,
        from_id INTEGER NOT NULL,
        chat_id INTEGER NOT NULL,
        chat_type TEXT NOT NULL,
        chat_key TEXT NOT NULL,
        message_type TEXT NOT NULL,
        content TEXT NOT NULL,
        extend TEXT,
        timestamp INTEGER NOT NULL,
        UNIQUE (from_id, cid)
    );
    CREATE INDEX messages_by_chat ON messages (chat_key, id);
    CREATE TABLE pending (
        user_id INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        PRIMARY KEY (user_id, message_id)
    ) WITHOUT ROWID;
    CREATE TABLE read_cursors (
        user_id INTEGER NOT NULL,
        chat_type TEXT NOT NULL,
        chat_id INTEGER NOT NULL,
        timestamp INTEGER NOT NULL,
        PRIMARY KEY (user_id, chat_type, chat_id)
    ) WITHOUT ROWID
    """,
    # 2: read state of history items and unread counts (delivered, read, unread).
    """
    CREATE INDEX messages_by_chat_time ON messages (chat_key, timestamp);
    CREATE INDEX read_cursors_by_chat ON read_cursors (chat_type, chat_id, user_id)
    """,
    # 3: data lifecycle (purge, export by user, erasure): sqlite_lifecycle.INDEXES.
    INDEXES,
]
UNREAD_CHUNK = 400

class SqliteMessages(SqliteLifecycle):
    commits_inline = True  # on the event loop when no other writer holds the lock (commit_now)
    commits_atomic = True  # a commit is one transaction: a failed one wrote nothing

    def __init__(self, path: str, full_sync: bool = True) -> None:
        """`full_sync=False`: synchronous=NORMAL (a power loss may lose the last commits), and
        the WAL is copied into the file by `checkpoint`, not inside commits (sqlite_base.py)."""
        self._db = SqliteDatabase(path, MIGRATIONS, full_sync, background_checkpoints=not full_sync)
        self.checkpoints = not full_sync

    def commit(self, saves: Sequence[NewMessage], confirms: Sequence[Confirm]) -> tuple[list[Saved], list[list[Message]]]:
        return self._commit(saves, confirms, wait=True)

    def commit_now(self, saves: Sequence[NewMessage],
                   confirms: Sequence[Confirm]) -> tuple[list[Saved], list[list[Message]]] | None:
        try:
            return self._commit(saves, confirms, wait=False)
        except WouldWait:
            return None

    def _commit(self, saves: Sequence[NewMessage], confirms: Sequence[Confirm],
                wait: bool) -> tuple[list[Saved], list[list[Message]]]:
        with self._db.transaction(wait=wait) as conn:
            saved = [self._save_one(conn, item) for item in saves]
            removed = [self._confirm(conn, c.user_id, c.ids) for c in confirms]
        return saved, removed

    def checkpoint(self) -> None:
        self._db.checkpoint()

    def save_messages(self, batch: Sequence[NewMessage]) -> list[Saved]:
        return self.commit(batch, ())[0]

    @staticmethod
    def _save_one(conn: sqlite3.Connection, item: NewMessage) -> Saved:
        m = item.message
        extend = json.dumps(m.extend, ensure_ascii=False) if m.extend is not None else None
        cursor = conn.execute(
            INSERT_MESSAGE,
            (m.id, m.cid, m.from_id, m.chat_id, m.chat_type.value, m.message_type.value, m.content,
             extend, m.timestamp, m.chat_key),
        )
        if cursor.rowcount == 0:  # (from_id, cid) exists: the earlier message stands
            row = conn.execute(
                f"SELECT {COLUMNS} FROM messages WHERE from_id = ? AND cid = ?", (m.from_id, m.cid)
            ).fetchone()
            return Saved(_message(row), created=False)
        pending = item.pending_for
        if len(pending) == 1:  # a friend message: one row, without executemany's setup
            conn.execute(INSERT_PENDING, (pending[0], m.id))
        elif pending:
            conn.executemany(INSERT_PENDING, [(user, m.id) for user in pending])
        return Saved(m, created=True)

    def finish_saves(self, batch: Sequence[NewMessage]) -> list[Message]:
        """Nothing to finish: a failed commit rolled back whole."""
        return []

    def pending(self, user_id: UserId, after: MessageId, limit: int) -> list[Message]:
        with self._db.reading() as conn:
            rows = conn.execute(
                f"SELECT {M_COLUMNS} FROM pending p JOIN messages m ON m.id = p.message_id "
                "WHERE p.user_id = ? AND p.message_id > ? ORDER BY p.message_id LIMIT ?",
                (user_id, after, limit),
            ).fetchall()
        return [_message(r) for r in rows]

    def confirm(self, user_id: UserId, ids: Sequence[MessageId]) -> list[Message]:
        return self.commit((), [Confirm(user_id, tuple(ids))])[1][0]

    @staticmethod
    def _confirm(conn: sqlite3.Connection, user_id: UserId, ids: Sequence[MessageId]) -> list[Message]:
        """DELETE ... RETURNING (SQLite >= 3.35), then the removed messages, in `ids` order."""
        wanted = list(dict.fromkeys(ids))
        removed: list[int] = []
        for start in range(0, len(wanted), UNREAD_CHUNK):
            chunk = wanted[start : start + UNREAD_CHUNK]
            marks = ",".join("?" * len(chunk))
            removed += [r[0] for r in conn.execute(
                f"DELETE FROM pending WHERE user_id = ? AND message_id IN ({marks}) RETURNING message_id",
                (user_id, *chunk),
            ).fetchall()]
        found: dict[int, Message] = {}
        for start in range(0, len(removed), UNREAD_CHUNK):
            part = removed[start : start + UNREAD_CHUNK]
            marks = ",".join("?" * len(part))
            rows = conn.execute(f"SELECT {COLUMNS} FROM messages WHERE id IN ({marks})", part).fetchall()
            found.update((r[0], _message(r)) for r in rows)
        return [found[i] for i in wanted if i in found]

    def group_messages_after(self, cursors: dict[GroupId, int], after: MessageId, limit: int) -> list[Message]:
        found: list[Message] = []
        with self._db.reading() as conn:
            for group_id, cursor in cursors.items():
                rows = conn.execute(
                    f"SELECT {COLUMNS} FROM messages WHERE chat_key = ? AND id > ? AND timestamp > ? "
                    "ORDER BY id LIMIT ?",
                    (f"g{group_id}", after, cursor, limit),
                ).fetchall()
                found.extend(_message(r) for r in rows)
        found.sort(key=lambda m: m.id)
        return found[:limit]

    def set_read_cursor(self, user_id: UserId, chat_type: ChatType, chat_id: int, timestamp: int) -> int:
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO read_cursors (user_id, chat_type, chat_id, timestamp) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (user_id, chat_type, chat_id) DO UPDATE SET "
                "timestamp = MAX(timestamp, excluded.timestamp)",
                (user_id, chat_type.value, chat_id, timestamp),
            )
            row = conn.execute(
                "SELECT timestamp FROM read_cursors WHERE user_id = ? AND chat_type = ? AND chat_id = ?",
                (user_id, chat_type.value, chat_id),
            ).fetchone()
        return int(row[0])

    def read_cursors(self, user_id: UserId) -> list[ReadCursor]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT chat_type, chat_id, timestamp FROM read_cursors WHERE user_id = ?", (user_id,)
            ).fetchall()
        return [ReadCursor(ChatType(r[0]), r[1], r[2]) for r in rows]

    def pending_among(self, user_id: UserId, ids: Sequence[MessageId]) -> set[MessageId]:
        wanted = list(dict.fromkeys(ids))
        found: set[MessageId] = set()
        with self._db.reading() as conn:
            for start in range(0, len(wanted), UNREAD_CHUNK):
                chunk = wanted[start : start + UNREAD_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT message_id FROM pending WHERE user_id = ? AND message_id IN ({marks})",
                    (user_id, *chunk),
                )
                found.update(MessageId(r[0]) for r in rows)
        return found

    def group_cursors(self, group_id: GroupId) -> dict[UserId, int]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT user_id, timestamp FROM read_cursors WHERE chat_type = ? AND chat_id = ?",
                (ChatType.GROUP.value, group_id),
            ).fetchall()
        return {UserId(r[0]): int(r[1]) for r in rows}

    def unread_counts(self, user_id: UserId, cursors: dict[str, int]) -> dict[str, int]:
        items = list(cursors.items())
        counts: dict[str, int] = {}
        with self._db.reading() as conn:
            for start in range(0, len(items), UNREAD_CHUNK):
                chunk = items[start : start + UNREAD_CHUNK]
                values = ",".join(["(?, ?)"] * len(chunk))
                rows = conn.execute(
                    f"WITH c(k, t) AS (VALUES {values}) SELECT m.chat_key, COUNT(*) FROM c "
                    "JOIN messages m ON m.chat_key = c.k AND m.timestamp > c.t "
                    "WHERE m.from_id != ? GROUP BY m.chat_key",
                    (*[v for pair in chunk for v in pair], user_id),
                )
                counts.update((r[0], int(r[1])) for r in rows)
        return counts

    def history(self, chat_key: str, before: MessageId | None, limit: int) -> tuple[list[Message], bool]:
        with self._db.reading() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM messages WHERE chat_key = ? AND id < ? ORDER BY id DESC LIMIT ?",
                (chat_key, before if before is not None else (1 << 63) - 1, limit + 1),
            ).fetchall()
        more = len(rows) > limit
        return [_message(r) for r in reversed(rows[:limit])], more

    def get(self, message_id: MessageId) -> Message | None:
        with self._db.reading() as conn:
            row = conn.execute(f"SELECT {COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
        return _message(row) if row else None

    def recall(self, message_id: MessageId) -> Message:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE messages SET message_type = ?, content = '', extend = NULL WHERE id = ?",
                (MessageType.RECALLED.value, message_id),
            )
            row = conn.execute(f"SELECT {COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise NotFound(f"message {message_id}")
        return _message(row)

    def close(self) -> None:
        self._db.close()
