"""The Directory port's contract, checked on every adapter (SQLite, MySQL/MariaDB) alike."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import cast

import pytest

from vim_cluster.adapters.sqlite_directory import SqliteDirectory
from vim_cluster.departments import ensure_path, path_of
from vim_cluster.errors import ClientError, Conflict, ErrorKind, NotFound
from vim_cluster.lifecycle_ports import UserRemoval
from vim_cluster.model import Department, Group, GroupId, User, UserId
from vim_cluster.ports import Directory, GroupQuota

from .conftest import DirectoryOpener

pytestmark = pytest.mark.timeout(60)

NAMES = "张伟 👩‍💻🚀 Zoë"


def user(n: int, username: str | None = None, name: str | None = None) -> User:
    return User(UserId(n), username or f"user{n}", name or f"User {n}", f"$argon2id$hash{n}")


def add_users(directory: Directory, *ids: int) -> list[User]:
    users = [user(n) for n in ids]
    for u in users:
        directory.create_user(u)
    return users


def test_created_user_is_found_by_username_in_any_case(directory: Directory) -> None:
    alice = user(1, "Alice")
    directory.create_user(alice)
    assert directory.user_by_username("Alice") == alice
    assert directory.user_by_username("alice") == alice
    assert directory.user_by_username("ALICE") == alice
    assert directory.user_by_username("bob") is None
    # Not another spelling: MySQL's utf8mb4_bin ignores trailing spaces, and each spelling
    # would get a login lockout budget of its own (a brute-force bypass).
    assert directory.user_by_username("alice ") is None and directory.user_by_username("alice   ") is None


def test_duplicate_username_conflicts_case_insensitively(directory: Directory) -> None:
    directory.create_user(user(1, "Alice"))
    with pytest.raises(Conflict):
        directory.create_user(user(2, "alice"))
    with pytest.raises(Conflict):
        directory.create_user(user(3, "ALICE"))
    assert directory.user_by_username("aLiCe") == user(1, "Alice")
    assert [u.id for u in directory.all_users()] == [1]
    directory.create_user(user(4, "alice2"))  # the adapter still works after a conflict


def test_look_alike_usernames_are_one_user(directory: Directory) -> None:
    """Full-width letters, the Kelvin sign and case all fold to the same username key."""
    directory.create_user(user(1, "Kate"))
    for n, look_alike in enumerate(["ＫＡＴＥ", "\u212aate", "kATE"], start=2):
        with pytest.raises(Conflict):
            directory.create_user(user(n, look_alike))
        assert directory.user_by_username(look_alike) == user(1, "Kate")
    assert directory.user_by_username("kate\n") is None  # matched whole, not by prefix
    assert [u.id for u in directory.all_users()] == [1]


def test_users_by_id_returns_only_those_that_exist(directory: Directory) -> None:
    add_users(directory, 1, 2, 3)
    found = directory.users_by_id([UserId(3), UserId(1), UserId(99), UserId(1)])
    assert found == {UserId(1): user(1), UserId(3): user(3)}
    assert directory.users_by_id([]) == {}
    many = [UserId(n) for n in range(1000, 1700)] + [UserId(2)]  # more ids than one query takes
    assert directory.users_by_id(many) == {UserId(2): user(2)}


def test_all_users_are_ordered_by_id(directory: Directory) -> None:
    add_users(directory, 30, 10, 20)
    assert [u.id for u in directory.all_users()] == [10, 20, 30]


def test_set_password_hash_replaces_it_and_a_missing_user_is_not_found(directory: Directory) -> None:
    add_users(directory, 7)
    directory.set_password_hash(UserId(7), "new-hash")
    directory.set_password_hash(UserId(7), "new-hash")  # the same again is no error
    found = directory.user_by_username("user7")
    assert found is not None and found.password_hash == "new-hash"
    with pytest.raises(NotFound):
        directory.set_password_hash(UserId(8), "x")


def test_chinese_and_emoji_names_round_trip(directory: Directory) -> None:
    directory.create_user(user(1, "zhang", NAMES))
    directory.create_user(user(2, "li", "李娜😀"))
    assert directory.user_by_username("zhang") == user(1, "zhang", NAMES)
    directory.create_group(Group(GroupId(100), "研发部 🎉🔥", UserId(1), (UserId(1), UserId(2))))
    group = directory.group(GroupId(100))
    assert group is not None and group.name == "研发部 🎉🔥"
    assert [u.name for u in directory.all_users()] == [NAMES, "李娜😀"]


def test_group_is_created_with_its_members_ordered_by_id(directory: Directory) -> None:
    add_users(directory, 1, 2, 3)
    directory.create_group(Group(GroupId(100), "team", UserId(2), (UserId(3), UserId(1), UserId(2), UserId(3))))
    assert directory.group(GroupId(100)) == Group(GroupId(100), "team", UserId(2), (UserId(1), UserId(2), UserId(3)))


def test_group_without_members_and_missing_group(directory: Directory) -> None:
    add_users(directory, 1)
    directory.create_group(Group(GroupId(100), "empty", UserId(1), ()))
    assert directory.group(GroupId(100)) == Group(GroupId(100), "empty", UserId(1), ())
    assert directory.group(GroupId(999)) is None


def test_change_members_adds_and_removes_idempotently(directory: Directory) -> None:
    add_users(directory, 1, 2, 3, 4)
    directory.create_group(Group(GroupId(100), "team", UserId(1), (UserId(1), UserId(2))))
    changed = directory.change_members(GroupId(100), [UserId(4), UserId(3)], [UserId(2)])
    assert changed.members == (1, 3, 4)
    again = directory.change_members(GroupId(100), [UserId(4), UserId(3)], [UserId(2)])
    assert again == changed
    assert directory.group(GroupId(100)) == changed
    assert directory.change_members(GroupId(100), [], []) == changed
    assert directory.change_members(GroupId(100), [UserId(1), UserId(1)], []).members == (1, 3, 4)


def test_change_members_of_a_missing_group_raises_not_found_and_changes_nothing(directory: Directory) -> None:
    add_users(directory, 1)
    with pytest.raises(NotFound):
        directory.change_members(GroupId(404), [UserId(1)], [])
    assert directory.groups_of(UserId(1)) == []


def test_change_members_that_fails_leaves_the_group_as_it_was(directory: Directory) -> None:
    add_users(directory, 1, 2, 3)
    directory.create_group(Group(GroupId(100), "team", UserId(1), (UserId(1), UserId(2))))
    before = directory.group(GroupId(100))
    # User 3 exists, user 999 does not: the whole change is refused, user 3 is not added.
    # (The MySQL adapter says NotFound; the SQLite one lets sqlite3.IntegrityError through.)
    with pytest.raises((NotFound, sqlite3.IntegrityError)):
        directory.change_members(GroupId(100), [UserId(3), UserId(999)], [UserId(2)])
    assert directory.group(GroupId(100)) == before


def test_groups_of_lists_the_users_groups_ordered_by_id(directory: Directory) -> None:
    add_users(directory, 1, 2, 3)
    directory.create_group(Group(GroupId(300), "c", UserId(1), (UserId(1), UserId(3))))
    directory.create_group(Group(GroupId(100), "a", UserId(2), (UserId(1), UserId(2))))
    directory.create_group(Group(GroupId(200), "b", UserId(2), (UserId(2),)))
    assert [g.id for g in directory.groups_of(UserId(1))] == [100, 300]
    assert directory.groups_of(UserId(1))[1] == Group(GroupId(300), "c", UserId(1), (UserId(1), UserId(3)))
    assert [g.id for g in directory.groups_of(UserId(2))] == [100, 200]
    assert directory.groups_of(UserId(42)) == []


def test_what_was_written_survives_reopening(open_directory: DirectoryOpener) -> None:
    first = open_directory()
    add_users(first, 1, 2)
    first.create_group(Group(GroupId(100), "team", UserId(1), (UserId(1), UserId(2))))
    first.close()
    second = open_directory()
    assert [u.id for u in second.all_users()] == [1, 2]
    assert second.group(GroupId(100)) == Group(GroupId(100), "team", UserId(1), (UserId(1), UserId(2)))


def test_concurrent_member_changes_all_apply(open_directory: DirectoryOpener) -> None:
    directory = open_directory()
    add_users(directory, *range(1, 21))
    directory.create_group(Group(GroupId(100), "team", UserId(1), (UserId(1),)))
    errors: list[BaseException] = []

    def add(member: int) -> None:
        try:
            directory.change_members(GroupId(100), [UserId(member)], [])
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(n,)) for n in range(2, 21)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    group = directory.group(GroupId(100))
    assert group is not None and group.members == tuple(range(1, 21))


def test_group_create_quota_counts_an_owners_groups_in_the_window_and_in_all(open_directory: DirectoryOpener) -> None:
    """group-create's quota (vim.group.*): groups with an id from `since` on count against
    the window (`rate-limited`), every group owned against the total (`forbidden`); a refused
    create leaves nothing; another owner's groups do not count."""
    directory = open_directory()
    add_users(directory, 1, 2)
    for n, group_id in enumerate((100, 200, 300)):  # 100 is older than the window
        directory.create_group(Group(GroupId(group_id), f"g{n}", UserId(1), (UserId(1), UserId(2))))
    directory.create_group(Group(GroupId(400), "bob's", UserId(2), (UserId(2),)))
    quota = GroupQuota(since=GroupId(150), per_window=3, window_s=3600, owned=5)
    directory.create_group(Group(GroupId(500), "third in the window", UserId(1), (UserId(1),)), quota)
    with pytest.raises(ClientError) as refused:
        directory.create_group(Group(GroupId(600), "fourth", UserId(1), (UserId(1),)), quota)
    assert refused.value.kind is ErrorKind.RATE_LIMITED and "3 groups" in refused.value.detail
    assert directory.group(GroupId(600)) is None and [g.id for g in directory.groups_of(UserId(1))] == [100, 200, 300, 500]
    with pytest.raises(ClientError) as refused:  # a window further on: the total still holds
        directory.create_group(Group(GroupId(600), "fifth", UserId(1), (UserId(1),)), GroupQuota(GroupId(550), 3, 3600, 4))
    assert refused.value.kind is ErrorKind.FORBIDDEN and "4" in refused.value.detail
    directory.create_group(Group(GroupId(700), "bob's second", UserId(2), (UserId(2),)), quota)


def test_group_creates_at_once_cannot_pass_the_quota_together(open_directory: DirectoryOpener) -> None:
    """Counted inside the create's transaction, serialized per owner: 10 creates at once from
    two adapters (two nodes) with room for 3 create 3."""
    first, second = open_directory(), open_directory()
    add_users(first, 1)
    quota = GroupQuota(since=GroupId(1), per_window=3, window_s=3600, owned=1000)
    outcomes: list[str] = []

    def create(n: int) -> None:
        try:
            (first if n % 2 else second).create_group(Group(GroupId(100 + n), "g", UserId(1), (UserId(1),)), quota)
            outcomes.append("created")
        except ClientError:
            outcomes.append("refused")

    threads = [threading.Thread(target=create, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 7
    assert len(first.groups_of(UserId(1))) == 3


def test_member_changes_at_once_cannot_pass_the_group_limit_together(open_directory: DirectoryOpener) -> None:
    """The limit is counted inside the change's transaction: a node that read the group before
    another's change (the handler checks first) cannot add past it (security review: two
    `group-add`s at once made a group of 1,301 with the limit at 1,000)."""
    directory = open_directory()
    add_users(directory, *range(1, 21))
    directory.create_group(Group(GroupId(100), "team", UserId(1), (UserId(1),)))
    with pytest.raises(ClientError, match="at most 3 members"):
        directory.change_members(GroupId(100), [UserId(2), UserId(3), UserId(4)], [], most=3)
    assert directory.group(GroupId(100)) == Group(GroupId(100), "team", UserId(1), (UserId(1),))  # nothing changed
    outcomes: list[str] = []

    def add(members: range) -> None:
        try:
            directory.change_members(GroupId(100), [UserId(m) for m in members], [], most=10)
            outcomes.append("added")
        except ClientError:
            outcomes.append("refused")

    threads = [threading.Thread(target=add, args=(members,)) for members in (range(2, 8), range(8, 14))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["added", "refused"]  # 1 + 6 + 6 > 10: one of them, whole
    group = directory.group(GroupId(100))
    assert group is not None and len(group.members) == 7


def test_several_nodes_may_open_a_new_store_at_once(
    open_directory: DirectoryOpener, request: pytest.FixtureRequest
) -> None:
    opened: list[Directory] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def open_and_write(n: int) -> None:
        try:
            directory = open_directory()
            with lock:
                opened.append(directory)
            directory.create_user(user(n))
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=open_and_write, args=(n,)) for n in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert [u.id for u in opened[0].all_users()] == [1, 2, 3, 4, 5, 6]


def test_a_cached_group_is_never_stale(open_directory: DirectoryOpener) -> None:
    """`cached_group` answers None or what `group` answers now, whoever changed the group
    (this adapter, or another one on the same store: another node)."""
    here, there = open_directory(), open_directory()
    add_users(here, 1, 2, 3, 4)
    here.create_group(Group(GroupId(100), "team", UserId(1), (UserId(1), UserId(2))))

    def fresh_or_none() -> None:
        cached = here.cached_group(GroupId(100))
        assert cached is None or cached == here.group(GroupId(100))

    assert here.cached_group(GroupId(999)) is None and here.group(GroupId(999)) is None
    here.group(GroupId(100))
    fresh_or_none()
    there.change_members(GroupId(100), [UserId(3)], [])
    fresh_or_none()
    here.group(GroupId(100))
    here.change_members(GroupId(100), [], [UserId(2)])
    fresh_or_none()
    assert here.group(GroupId(100)) == Group(GroupId(100), "team", UserId(1), (UserId(1), UserId(3)))
    there.create_user(user(5))  # a commit to another table
    fresh_or_none()


def test_sqlite_keeps_a_group_until_any_process_commits(tmp_path: Path) -> None:
    """What `cached_group` saves on SQLite: the group read last, until a commit to the file by
    this connection, another one, or another process (a node sharing the file)."""
    path = str(tmp_path / "directory.db")
    here = SqliteDirectory(path)
    try:
        add_users(here, 1, 2, 3)
        team = Group(GroupId(100), "team", UserId(1), (UserId(1), UserId(2)))
        here.create_group(team)
        assert here.cached_group(GroupId(100)) is None  # never read yet
        assert here.group(GroupId(100)) == team
        assert here.cached_group(GroupId(100)) == team
        assert here.cached_group(GroupId(100)) == team  # asking does not forget it
        # Another process adds a member, as another node would.
        subprocess.run([sys.executable, "-c", (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10);"
            " c.execute('INSERT INTO group_members (group_id, user_id) VALUES (100, 3)')"), path],
            check=True, timeout=30)
        assert here.cached_group(GroupId(100)) is None
        assert here.group(GroupId(100)) == Group(GroupId(100), "team", UserId(1), (UserId(1), UserId(2), UserId(3)))
        assert here.cached_group(GroupId(100)) is not None
        here.create_user(user(9))  # this connection's own commit
        assert here.cached_group(GroupId(100)) is None
    finally:
        here.close()


def test_all_users_is_never_stale(open_directory: DirectoryOpener, tmp_path: Path) -> None:
    """`all_users` (kept between commits on SQLite) answers what was committed before it was
    asked, by this adapter, another one (another node) or, on SQLite, another process."""
    here, there = open_directory(), open_directory()
    add_users(here, 1, 2)
    assert [u.id for u in here.all_users()] == [1, 2]
    there.create_user(user(3))
    assert [u.id for u in here.all_users()] == [1, 2, 3]
    cast(UserRemoval, there).delete_user(UserId(1))  # both adapters are a UserRemoval too
    assert [u.id for u in here.all_users()] == [2, 3]
    here.all_users().clear()  # what a caller does with its list is its own
    assert [u.id for u in here.all_users()] == [2, 3]
    if isinstance(here, SqliteDirectory):
        subprocess.run([sys.executable, "-c", (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10);"
            " c.execute(\"UPDATE users SET name = 'Renamed' WHERE id = 2\")"), str(tmp_path / "directory.db")],
            check=True, timeout=30)
        assert [u.name for u in here.all_users()] == ["Renamed", "User 3"]


def test_sqlite_cached_group_does_not_wait_for_a_busy_connection(tmp_path: Path) -> None:
    """Called on the event loop: while a worker thread holds the connection it says None at
    once instead of waiting."""
    here = SqliteDirectory(str(tmp_path / "directory.db"))
    try:
        add_users(here, 1)
        here.create_group(Group(GroupId(100), "team", UserId(1), (UserId(1),)))
        assert here.group(GroupId(100)) is not None
        with here._db.reading():  # what a worker thread's read holds
            answered: list[Group | None] = []
            worker = threading.Thread(target=lambda: answered.append(here.cached_group(GroupId(100))))
            worker.start()
            worker.join(10)
            assert answered == [None]
        assert here.cached_group(GroupId(100)) is not None
    finally:
        here.close()


def test_departments_form_a_tree_and_users_belong_to_one(directory: Directory) -> None:
    directory.create_department(Department(10, "研发部 R&D"))
    directory.create_department(Department(11, "Backend", parent_id=10))
    directory.create_department(Department(5, "Sales"))
    assert directory.departments() == [Department(5, "Sales"), Department(10, "研发部 R&D"),
                                       Department(11, "Backend", 10)]
    directory.create_user(User(UserId(1), "alice", "Alice", "h1", department_id=11))
    directory.create_user(user(2))
    found = directory.users_by_id([UserId(1), UserId(2)])
    assert found[UserId(1)].department_id == 11 and found[UserId(2)].department_id is None


def test_department_with_a_missing_parent_or_a_taken_id_is_refused(directory: Directory) -> None:
    directory.create_department(Department(10, "Ops"))
    with pytest.raises(NotFound):
        directory.create_department(Department(11, "Orphan", parent_id=999))
    with pytest.raises(Conflict):
        directory.create_department(Department(10, "Again"))
    with pytest.raises(NotFound):
        directory.create_user(User(UserId(1), "bob", "Bob", "h", department_id=404))
    assert directory.departments() == [Department(10, "Ops")]
    assert directory.all_users() == []


def test_department_path_is_created_once_and_then_found(directory: Directory) -> None:
    ids = iter(range(100, 200))
    backend = ensure_path(directory, "Engineering / Backend", lambda: next(ids))
    again = ensure_path(directory, "Engineering/Backend", lambda: next(ids))
    frontend = ensure_path(directory, "Engineering/Frontend", lambda: next(ids))
    assert backend == again
    engineering = [d for d in directory.departments() if d.name == "Engineering"]
    assert len(engineering) == 1
    assert {d.parent_id for d in directory.departments() if d.id in (backend, frontend)} == {engineering[0].id}
    assert path_of(directory.departments(), backend) == "Engineering/Backend"  # `user list` shows it so
    assert path_of(directory.departments(), 404) == "[404]"
    with pytest.raises(ClientError):
        ensure_path(directory, "Engineering//Backend", lambda: next(ids))


def test_group_creates_naming_each_other_all_succeed(open_directory: DirectoryOpener) -> None:
    """Two owners creating groups with each other as members at once, quota and all: every
    create succeeds (on MariaDB, an owner's row locked FOR UPDATE while the insert of a member
    waited for the other owner's row made InnoDB deadlocks: `unavailable` to one of them)."""
    first, second = open_directory(), open_directory()
    add_users(first, 1, 2)
    quota = GroupQuota(since=GroupId(1), per_window=1000, window_s=3600, owned=1000)
    failures: list[BaseException] = []

    def create(owner: int, other: int, directory: Directory) -> None:
        for n in range(40):
            try:
                directory.create_group(
                    Group(GroupId(owner * 1000 + n), "g", UserId(owner), (UserId(1), UserId(2))), quota)
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                failures.append(exc)

    threads = [threading.Thread(target=create, args=(1, 2, first)), threading.Thread(target=create, args=(2, 1, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert len(first.groups_of(UserId(1))) == 80
