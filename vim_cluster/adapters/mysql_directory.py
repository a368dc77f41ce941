"""The Directory port on MySQL/MariaDB (pymysql): users, departments, groups and members.

Rules (beyond those of `mysql_base`):
- Usernames are unique by their normalised key (`core.usernames.key`: NFKC, then casefold):
  `users.username_key` has a UNIQUE index under the binary collation utf8mb4_bin, so 'Alice',
  'ALICE' and full-width 'ａｌｉｃｅ' collide (Conflict) and a lookup by any spelling finds the
  user. (`users.username`'s own UNIQUE index under utf8mb4_unicode_ci stays.)
- create_group and change_members each run in one InnoDB transaction; change_members first
  locks the group's row (SELECT ... FOR UPDATE), so concurrent changes to one group serialize,
  and create_group with a quota runs under its owner's named lock (GET_LOCK), so one owner's
  creates count in turn (not the owner's row: the foreign keys of other creates lock it too).
- Reads of a group and its members are one statement (one consistent snapshot).
- The groups table is `chat_groups` (GROUPS is a reserved word since MySQL 8.0.2).
- A duplicate key becomes Conflict; a reference to a missing user, group or department
  becomes NotFound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import pymysql
from pymysql.cursors import Cursor

from ..core import usernames
from ..errors import Conflict, NotFound
from ..model import Department, Group, GroupId, User, UserId
from ..ports import GroupQuota, over_quota, too_many
from .mysql_base import ER_DUP_ENTRY, ER_NO_REFERENCED_ROW, POOL_SIZE, TABLE_OPTIONS, MysqlDatabase

MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE IF NOT EXISTS departments ("
        " id BIGINT NOT NULL PRIMARY KEY,"
        " name TEXT NOT NULL,"
        " parent_id BIGINT NULL,"
        " CONSTRAINT departments_parent FOREIGN KEY (parent_id) REFERENCES departments (id)"
        f") {TABLE_OPTIONS}",
        "CREATE TABLE IF NOT EXISTS users ("
        " id BIGINT NOT NULL PRIMARY KEY,"
        " username VARCHAR(255) NOT NULL,"
        " name TEXT NOT NULL,"
        " password_hash TEXT NOT NULL,"
        " department_id BIGINT NULL,"
        " UNIQUE KEY users_username (username),"
        " CONSTRAINT users_department FOREIGN KEY (department_id) REFERENCES departments (id)"
        f") {TABLE_OPTIONS}",
        "CREATE TABLE IF NOT EXISTS chat_groups ("
        " id BIGINT NOT NULL PRIMARY KEY,"
        " name TEXT NOT NULL,"
        " owner_id BIGINT NOT NULL,"
        " CONSTRAINT chat_groups_owner FOREIGN KEY (owner_id) REFERENCES users (id)"
        f") {TABLE_OPTIONS}",
        "CREATE TABLE IF NOT EXISTS group_members ("
        " group_id BIGINT NOT NULL,"
        " user_id BIGINT NOT NULL,"
        " PRIMARY KEY (group_id, user_id),"
        " KEY group_members_by_user (user_id, group_id),"
        " CONSTRAINT group_members_group FOREIGN KEY (group_id) REFERENCES chat_groups (id),"
        " CONSTRAINT group_members_user FOREIGN KEY (user_id) REFERENCES users (id)"
        f") {TABLE_OPTIONS}",
    ],
    # 2: the normalised username key (core.usernames.key), unique byte for byte. Rows from
    # before it get LOWER(username): their usernames are ASCII, where that is the same key.
    # (ADD COLUMN / CREATE INDEX IF NOT EXISTS are MariaDB's idempotent DDL.)
    [
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS username_key VARCHAR(255)"
        " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL",
        "UPDATE users SET username_key = LOWER(username) WHERE username_key IS NULL",
        "ALTER TABLE users MODIFY username_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL",
        "CREATE UNIQUE INDEX IF NOT EXISTS users_username_key ON users (username_key)",
    ],
    # 3: the key may be NULL again, for the rows a node of a release before 2 writes during a
    # rolling upgrade (its INSERT names no key: NOT NULL failed its `register`); lookups find
    # such a row by its ASCII username (user_by_username). New nodes always write the key.
    [
        "ALTER TABLE users MODIFY username_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL",
    ],
]

USER_COLUMNS = "id, username, name, password_hash, department_id"
GROUP_ROWS = (
    "SELECT g.id, g.name, g.owner_id, m.user_id FROM chat_groups g"
    " LEFT JOIN group_members m ON m.group_id = g.id"
)
ADD_MEMBER = (
    "INSERT INTO group_members (group_id, user_id) VALUES (%s, %s)"
    " ON DUPLICATE KEY UPDATE user_id = user_id"
)
ID_CHUNK = 500


def _user(row: Sequence) -> User:
    return User(id=UserId(row[0]), username=row[1], name=row[2], password_hash=row[3], department_id=row[4])


def _groups(rows: Iterable[Sequence]) -> list[Group]:
    """Groups from (id, name, owner, member) rows ordered by group id then member id."""
    found: dict[int, tuple[str, int, list[UserId]]] = {}
    for group_id, name, owner_id, member in rows:
        _, _, members = found.setdefault(group_id, (name, owner_id, []))
        if member is not None:
            members.append(UserId(member))
    return [Group(GroupId(i), n, UserId(o), tuple(m)) for i, (n, o, m) in found.items()]


@contextlib.contextmanager
def _integrity(what: str) -> Iterator[None]:
    """A duplicate key becomes Conflict, a missing referenced row NotFound."""
    try:
        yield
    except pymysql.IntegrityError as exc:
        code = exc.args[0] if exc.args else None
        if code == ER_DUP_ENTRY:
            raise Conflict(f"{what} exists") from None
        if code in ER_NO_REFERENCED_ROW:
            raise NotFound(f"{what} references a missing row") from None
        raise


class MysqlDirectory:
    """The Directory port on MySQL/MariaDB; safe to call from several threads at once."""

    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        self._db = MysqlDatabase(url, MIGRATIONS, pool_size)
        # How many calls may usefully run at once (the node may size its limiter by it).
        self.concurrency = pool_size

    def create_user(self, user: User) -> None:
        with _integrity(f"username {user.username!r}"), self._db.cursor() as cur:
            cur.execute(
                f"INSERT INTO users ({USER_COLUMNS}, username_key) VALUES (%s, %s, %s, %s, %s, %s)",
                (user.id, user.username, user.name, user.password_hash, user.department_id,
                 usernames.key(user.username)),
            )

    def user_by_username(self, username: str) -> User | None:
        key = usernames.key(username)
        with self._db.cursor() as cur:
            cur.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username_key = %s", (key,))
            row = cur.fetchone()
            if row is None:  # a row an older node wrote without a key (migration 3)
                cur.execute(f"SELECT {USER_COLUMNS} FROM users WHERE username = %s AND username_key IS NULL", (key,))
                row = cur.fetchone()
        user = _user(row) if row else None
        # utf8mb4_bin pads: 'alice   ' would find alice, and each such spelling would get a
        # login lockout budget of its own (the lockout counts by the key asked for).
        return user if user is not None and usernames.key(user.username) == key else None

    def users_by_id(self, ids: Iterable[UserId]) -> dict[UserId, User]:
        wanted = sorted(set(ids))
        found: dict[UserId, User] = {}
        if not wanted:
            return found
        with self._db.cursor() as cur:
            for start in range(0, len(wanted), ID_CHUNK):
                chunk = wanted[start : start + ID_CHUNK]
                marks = ", ".join(["%s"] * len(chunk))
                cur.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id IN ({marks})", chunk)
                for row in cur.fetchall():
                    found[UserId(row[0])] = _user(row)
        return found

    def all_users(self) -> list[User]:
        with self._db.cursor() as cur:
            cur.execute(f"SELECT {USER_COLUMNS} FROM users ORDER BY id")
            return [_user(row) for row in cur.fetchall()]

    def set_password_hash(self, user_id: UserId, password_hash: str) -> None:
        with self._db.cursor() as cur:
            changed = cur.execute("UPDATE users SET password_hash = %s WHERE id = %s", (password_hash, user_id))
            if not changed:  # MySQL counts changed rows: the same hash again is 0 too
                cur.execute("SELECT 1 FROM users WHERE id = %s", (user_id,))
                if cur.fetchone() is None:
                    raise NotFound(f"user {user_id}")

    def create_group(self, group: Group, quota: GroupQuota | None = None) -> None:
        # With a quota, the owner's named lock: one owner's creates count one after another.
        # (Its row locked FOR UPDATE deadlocked two owners creating groups with each other:
        # each insert of a member waits for that user's row, for its foreign key.)
        lock = f"groups-of.{group.owner_id}" if quota is not None else None
        with _integrity(f"group {group.id}"), self._db.transaction(lock) as cur:
            if quota is not None:
                cur.execute(
                    "SELECT COUNT(*), COALESCE(SUM(id >= %s), 0) FROM chat_groups WHERE owner_id = %s",
                    (quota.since, group.owner_id),
                )
                row = cur.fetchone()
                assert row is not None  # an aggregate always answers one row
                over_quota(quota, int(row[0]), int(row[1]))
            cur.execute(
                "INSERT INTO chat_groups (id, name, owner_id) VALUES (%s, %s, %s)",
                (group.id, group.name, group.owner_id),
            )
            if group.members:
                cur.executemany(ADD_MEMBER, [(group.id, m) for m in group.members])

    def group(self, group_id: GroupId) -> Group | None:
        with self._db.cursor() as cur:
            found = self._read_group(cur, group_id)
        return found

    def cached_group(self, group_id: GroupId) -> Group | None:
        """Never: whether another node changed the group is a round trip to know."""
        return None

    @staticmethod
    def _read_group(cur: Cursor, group_id: int) -> Group | None:
        cur.execute(f"{GROUP_ROWS} WHERE g.id = %s ORDER BY m.user_id", (group_id,))
        groups = _groups(cur.fetchall())
        return groups[0] if groups else None

    def change_members(self, group_id: GroupId, add: Sequence[UserId], remove: Sequence[UserId],
                       most: int | None = None) -> Group:
        with _integrity(f"group {group_id} member"), self._db.transaction() as cur:
            cur.execute("SELECT id FROM chat_groups WHERE id = %s FOR UPDATE", (group_id,))
            if cur.fetchone() is None:
                raise NotFound(f"group {group_id}")
            if add:
                cur.executemany(ADD_MEMBER, [(group_id, m) for m in dict.fromkeys(add)])
            if remove:
                marks = ", ".join(["%s"] * len(remove))
                cur.execute(
                    f"DELETE FROM group_members WHERE group_id = %s AND user_id IN ({marks})",
                    (group_id, *remove),
                )
            group = self._read_group(cur, group_id)
            assert group is not None  # the row is locked by this transaction
            too_many(group, most)  # raises: the transaction rolls back
        return group

    def groups_of(self, user_id: UserId) -> list[Group]:
        with self._db.cursor() as cur:
            cur.execute(
                f"{GROUP_ROWS} JOIN group_members mine ON mine.group_id = g.id"
                " WHERE mine.user_id = %s ORDER BY g.id, m.user_id",
                (user_id,),
            )
            return _groups(cur.fetchall())

    def delete_user(self, user_id: UserId) -> bool:
        """UserRemoval (lifecycle_ports): the account, its memberships; owned groups pass on.
        Locks the user's row and the groups it owns first (FOR UPDATE), as change_members does."""
        with self._db.transaction() as cur:
            cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (user_id,))
            if cur.fetchone() is None:
                return False
            cur.execute("SELECT id FROM chat_groups WHERE owner_id = %s ORDER BY id FOR UPDATE", (user_id,))
            owned = [r[0] for r in cur.fetchall()]
            cur.execute("DELETE FROM group_members WHERE user_id = %s", (user_id,))
            for group_id in owned:
                cur.execute("SELECT MIN(user_id) FROM group_members WHERE group_id = %s", (group_id,))
                row = cur.fetchone()
                heir = row[0] if row else None
                if heir is None:
                    cur.execute("DELETE FROM chat_groups WHERE id = %s", (group_id,))
                else:
                    cur.execute("UPDATE chat_groups SET owner_id = %s WHERE id = %s", (heir, group_id))
            cur.execute("DELETE FROM users WHERE id = %s", (user_id,))
        return True

    def create_department(self, department: Department) -> None:
        with _integrity(f"department {department.id}"), self._db.cursor() as cur:
            cur.execute(
                "INSERT INTO departments (id, name, parent_id) VALUES (%s, %s, %s)",
                (department.id, department.name, department.parent_id),
            )

    def departments(self) -> list[Department]:
        with self._db.cursor() as cur:
            cur.execute("SELECT id, name, parent_id FROM departments ORDER BY id")
            return [Department(r[0], r[1], r[2]) for r in cur.fetchall()]

    def close(self) -> None:
        self._db.close()
