"""The Directory port on SQLite: users, departments, groups and members.

Usernames are unique by their normalised key (`core.usernames.key`: NFKC, then casefold), held
in `users.username_key` under a UNIQUE index; lookups go by that key.

Groups read by `group` are kept (at most GROUP_CACHE) with the file's version
(`SqliteDatabase.version`) at the read; `cached_group` answers from them while the version is
unchanged, i.e. while no connection of any process has committed anything to the file. Any
commit, not only one to the group, forgets them all: simple, and never stale. A group message
thus costs no read of its 500 members (two queries, ~370 µs here, in a worker thread) while the
directory does not change (issue 12).

`all_users` is kept the same way, with the version of its read, and answered from memory
while the version is unchanged: `contacts` reads every user (12 ms for 5,000 here).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence

from ..core import usernames
from ..errors import Conflict, NotFound
from ..model import Department, Group, GroupId, User, UserId
from ..ports import GroupQuota, over_quota, too_many
from .sqlite_base import SqliteDatabase, WouldWait

MIGRATIONS = [
    """
    CREATE TABLE departments (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        parent_id INTEGER REFERENCES departments(id)
    );
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE COLLATE NOCASE,
        name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        department_id INTEGER REFERENCES departments(id)
    );
    CREATE TABLE chat_groups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        owner_id INTEGER NOT NULL REFERENCES users(id)
    );
    CREATE TABLE group_members (
        group_id INTEGER NOT NULL REFERENCES chat_groups(id),
        user_id INTEGER NOT NULL REFERENCES users(id),
        PRIMARY KEY (group_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX group_members_by_user ON group_members (user_id, group_id)
    """,
    # 2: the normalised username key (core.usernames.key), unique byte for byte. Rows from
    # before it get lower(username): their usernames are ASCII, where that is the same key.
    """
    ALTER TABLE users ADD COLUMN username_key TEXT;
    UPDATE users SET username_key = lower(username);
    CREATE UNIQUE INDEX users_username_key ON users (username_key)
    """,
    # 3: groups by owner, for the group-create quota (and a deleted user's groups).
    """
    CREATE INDEX chat_groups_by_owner ON chat_groups (owner_id, id)
    """,
]


def _user(row: tuple) -> User:
    return User(id=UserId(row[0]), username=row[1], name=row[2], password_hash=row[3], department_id=row[4])


USER_COLUMNS = "id, username, name, password_hash, department_id"
GROUP_CACHE = 256  # groups kept between commits to the directory (the oldest read goes first; a
# 500-member group is about 20 KB)


@contextlib.contextmanager
def _unknown_user_is_not_found() -> Iterator[None]:
    """A member that is no user violates a foreign key: that is NotFound, as on MySQL."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise NotFound(f"a member is no user: {exc}") from None


class SqliteDirectory:
    def __init__(self, path: str) -> None:
        self._db = SqliteDatabase(path, MIGRATIONS)
        # Read and written only under the database's lock (`reading`), by any thread.
        self._groups: dict[GroupId, Group] = {}
        self._groups_version: tuple[int, int] | None = None
        self._users: list[User] = []
        self._users_version: tuple[int, int] | None = None

    def create_user(self, user: User) -> None:
        key = usernames.key(user.username)
        try:
            with self._db.transaction() as conn:
                if conn.execute("SELECT 1 FROM users WHERE username = ? AND username_key IS NULL", (key,)).fetchone():
                    raise Conflict(f"username {user.username!r} exists")  # an older node's row (user_by_username)
                conn.execute(
                    f"INSERT INTO users ({USER_COLUMNS}, username_key) VALUES (?, ?, ?, ?, ?, ?)",
                    (user.id, user.username, user.name, user.password_hash, user.department_id, key),
                )
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise Conflict(f"username {user.username!r} exists") from None
            raise NotFound(f"department {user.department_id}") from None

    def user_by_username(self, username: str) -> User | None:
        key = usernames.key(username)
        with self._db.reading() as conn:
            row = conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username_key = ?", (key,)).fetchone()
            if row is None:
                # A node of a release before migration 2, during a rolling upgrade, writes users
                # without a key; their usernames are ASCII, whose key is the lower case (as the
                # migration says). Through the username's own NOCASE index.
                row = conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username = ? AND username_key IS NULL",
                                   (key,)).fetchone()
        return _user(row) if row else None

    def users_by_id(self, ids: Iterable[UserId]) -> dict[UserId, User]:
        wanted = list(set(ids))
        found: dict[UserId, User] = {}
        with self._db.reading() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id IN ({marks})", chunk):
                    found[UserId(row[0])] = _user(row)
        return found

    def all_users(self) -> list[User]:
        with self._db.reading() as conn:
            version = self._db.version(conn)  # before the read: a later commit makes it stale
            if version != self._users_version:
                self._users = [_user(row) for row in conn.execute(f"SELECT {USER_COLUMNS} FROM users ORDER BY id")]
                self._users_version = version
            return list(self._users)

    def set_password_hash(self, user_id: UserId, password_hash: str) -> None:
        with self._db.transaction() as conn:
            changed = conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id)).rowcount
        if not changed:
            raise NotFound(f"user {user_id}")

    def create_group(self, group: Group, quota: GroupQuota | None = None) -> None:
        with _unknown_user_is_not_found(), self._db.transaction() as conn:  # one writer: serialized
            if quota is not None:
                owned, recent = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(id >= ?), 0) FROM chat_groups WHERE owner_id = ?",
                    (quota.since, group.owner_id),
                ).fetchone()
                over_quota(quota, owned, recent)
            conn.execute(
                "INSERT INTO chat_groups (id, name, owner_id) VALUES (?, ?, ?)",
                (group.id, group.name, group.owner_id),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO group_members (group_id, user_id) VALUES (?, ?)",
                [(group.id, member) for member in group.members],
            )

    def group(self, group_id: GroupId) -> Group | None:
        with self._db.reading() as conn:
            version = self._db.version(conn)  # before the read: a later commit makes it stale
            group = self._group(conn, group_id)
            if version != self._groups_version:
                self._groups.clear()
                self._groups_version = version
            if group is not None:
                if len(self._groups) >= GROUP_CACHE:
                    del self._groups[next(iter(self._groups))]
                self._groups[group_id] = group
            return group

    def cached_group(self, group_id: GroupId) -> Group | None:
        try:
            with self._db.reading(wait=False) as conn:
                if self._db.version(conn) != self._groups_version:
                    return None
                return self._groups.get(group_id)
        except WouldWait:
            return None

    @staticmethod
    def _group(conn: sqlite3.Connection, group_id: int) -> Group | None:
        row = conn.execute("SELECT id, name, owner_id FROM chat_groups WHERE id = ?", (group_id,)).fetchone()
        if row is None:
            return None
        members = conn.execute(
            "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id", (group_id,)
        ).fetchall()
        return Group(GroupId(row[0]), row[1], UserId(row[2]), tuple(UserId(m[0]) for m in members))

    def change_members(self, group_id: GroupId, add: Sequence[UserId], remove: Sequence[UserId],
                       most: int | None = None) -> Group:
        with _unknown_user_is_not_found(), self._db.transaction() as conn:
            if conn.execute("SELECT 1 FROM chat_groups WHERE id = ?", (group_id,)).fetchone() is None:
                raise NotFound(f"group {group_id}")
            conn.executemany(
                "INSERT OR IGNORE INTO group_members (group_id, user_id) VALUES (?, ?)",
                [(group_id, m) for m in add],
            )
            conn.executemany(
                "DELETE FROM group_members WHERE group_id = ? AND user_id = ?",
                [(group_id, m) for m in remove],
            )
            group = self._group(conn, group_id)
            assert group is not None
            too_many(group, most)  # raises: the transaction rolls back
        return group

    def groups_of(self, user_id: UserId) -> list[Group]:
        with self._db.reading() as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT group_id FROM group_members WHERE user_id = ? ORDER BY group_id", (user_id,)
            )]
            return [g for g in (self._group(conn, i) for i in ids) if g is not None]

    def delete_user(self, user_id: UserId) -> bool:
        """UserRemoval (lifecycle_ports): the account, its memberships; owned groups pass on.
        Its row leaves the files too (secure_delete, then SqliteDatabase.wipe_wal)."""
        with self._db.transaction() as conn:
            conn.execute("PRAGMA secure_delete = ON")
            if conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
                return False
            conn.execute("DELETE FROM group_members WHERE user_id = ?", (user_id,))
            owned = [r[0] for r in conn.execute("SELECT id FROM chat_groups WHERE owner_id = ?", (user_id,))]
            for group_id in owned:
                heir = conn.execute("SELECT MIN(user_id) FROM group_members WHERE group_id = ?", (group_id,)).fetchone()[0]
                if heir is None:
                    conn.execute("DELETE FROM chat_groups WHERE id = ?", (group_id,))
                else:
                    conn.execute("UPDATE chat_groups SET owner_id = ? WHERE id = ?", (heir, group_id))
            conn.execute("DELETE FROM users WHERE id = ?", (user_id,))
        self._db.wipe_wal()
        return True

    def create_department(self, department: Department) -> None:
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT INTO departments (id, name, parent_id) VALUES (?, ?, ?)",
                    (department.id, department.name, department.parent_id),
                )
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise Conflict(f"department {department.id} exists") from None
            raise NotFound(f"parent department {department.parent_id}") from None

    def departments(self) -> list[Department]:
        with self._db.reading() as conn:
            rows = conn.execute("SELECT id, name, parent_id FROM departments ORDER BY id").fetchall()
        return [Department(r[0], r[1], r[2]) for r in rows]

    def close(self) -> None:
        self._db.close()
