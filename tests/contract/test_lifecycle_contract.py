"""The lifecycle ports' contract (retention, export, erasure, user removal) on every adapter:
SQLite and MongoDB/FerretDB message stores, SQLite and MySQL/MariaDB directories, real Redis."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from vim_cluster.adapters.mongo_messages import MongoMessages
from vim_cluster.adapters.redis_registry import RedisRegistry
from vim_cluster.adapters.sqlite_messages import SqliteMessages
from vim_cluster.config import MessageConfig
from vim_cluster.errors import StoreUnavailable
from vim_cluster.export import ImportCount, Selection, exported, header, import_lines, message_line
from vim_cluster.ids import first_id_at
from vim_cluster.lifecycle_ports import LifecycleStore, UserDirectory
from vim_cluster.model import (
    ChatType,
    Group,
    GroupId,
    Message,
    MessageId,
    MessageType,
    User,
    UserId,
)
from vim_cluster.node.blocking import BlockingRunner
from vim_cluster.node.retention import DUTY, Purger
from vim_cluster.ports import NewMessage

pytestmark = pytest.mark.timeout(120)

DAY = 86_400_000
NOW = 1_790_000_000_000  # 2026-09-21
ALICE, BOB, CAROL = UserId(11), UserId(12), UserId(13)
G1 = GroupId(101)


def at(ms: int, n: int) -> MessageId:
    """A real snowflake minted at `ms` (sequence n), as a node would."""
    return MessageId(first_id_at(ms) + n)


def message(ms: int, n: int, sender: UserId = ALICE, to: int = BOB, chat_type: ChatType = ChatType.FRIEND,
            **fields: Any) -> Message:
    values: dict[str, Any] = {"cid": f"c-{ms}-{n}", "message_type": MessageType.TEXT, "content": f"hi {n}",
                              "extend": None, "timestamp": ms}
    values.update(fields)
    return Message(id=at(ms, n), from_id=sender, chat_id=to, chat_type=chat_type, **values)


def save(store: LifecycleStore, messages: list[Message], *pending: UserId) -> None:
    store.save_messages([NewMessage(m, pending) for m in messages])


def everything(store: LifecycleStore, key: str = f"f{ALICE}-{BOB}") -> list[Message]:
    return list(exported(store, Selection(chat_key=key)))


def config(**fields: Any) -> MessageConfig:
    return MessageConfig(recall_window=120.0, **{"purge_batch": 10, **fields})


# -- retention -----------------------------------------------------------------------------------


def test_purge_removes_only_messages_past_the_cutoff_in_bounded_batches(messages: LifecycleStore) -> None:
    old = [message(NOW - 40 * DAY, n) for n in range(25)]
    young = [message(NOW - 10 * DAY, n) for n in range(5)]
    save(messages, old + young, BOB)
    cutoff = at(NOW - 30 * DAY, 0)
    assert messages.purge_messages(cutoff, 10) == 10
    assert messages.purge_messages(cutoff, 10) == 10
    assert messages.purge_messages(cutoff, 10) == 5
    assert messages.purge_messages(cutoff, 10) == 0
    assert everything(messages) == young
    assert [m.id for m in messages.pending(BOB, MessageId(0), 100)] == [m.id for m in young]
    assert messages.get(old[0].id) is None


def test_offline_purge_drops_unconfirmed_rows_but_history_keeps_the_messages(messages: LifecycleStore) -> None:
    old, young = message(NOW - 8 * DAY, 1), message(NOW - DAY, 2)
    save(messages, [old, young], BOB, CAROL)
    assert messages.purge_pending(at(NOW - 7 * DAY, 0), 1) == 1
    assert messages.purge_pending(at(NOW - 7 * DAY, 0), 10) == 1
    assert messages.purge_pending(at(NOW - 7 * DAY, 0), 10) == 0
    assert messages.pending(BOB, MessageId(0), 10) == [young]
    assert messages.pending(CAROL, MessageId(0), 10) == [young]
    assert everything(messages) == [old, young]


def test_purge_racing_with_new_messages_loses_none_of_them(open_messages: Callable[[], LifecycleStore]) -> None:
    purging, writing = open_messages(), open_messages()
    old = [message(NOW - 40 * DAY, n) for n in range(300)]
    save(purging, old, BOB)
    cutoff = at(NOW - 30 * DAY, 0)
    new: list[Message] = []
    failures: list[BaseException] = []

    def write() -> None:
        try:
            for n in range(60):
                batch = [message(NOW + n, k, cid=f"live-{n}-{k}") for k in range(5)]
                save(writing, batch, BOB)
                writing.confirm(BOB, [batch[0].id])
                new.extend(batch)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    removed = 0
    while step := purging.purge_messages(cutoff, 7):
        removed += step
    writer.join(60)
    assert not failures and not writer.is_alive()
    assert removed == len(old)
    assert everything(purging) == sorted(new, key=lambda m: m.id)
    confirmed = {m.id for i, m in enumerate(new) if i % 5 == 0}
    assert [m.id for m in purging.pending(BOB, MessageId(0), 1000)] == [m.id for m in new if m.id not in confirmed]


class FailingAfter:
    """The real store, with an outage injected after `batches` purge batches (a crash between
    batches): what the purge committed stays committed."""

    def __init__(self, store: LifecycleStore, batches: int) -> None:
        self.store, self.left = store, batches

    def purge_messages(self, before: MessageId, limit: int) -> int:
        if self.left == 0:
            raise StoreUnavailable("injected: the purge's process died between two batches")
        self.left -= 1
        return self.store.purge_messages(before, limit)

    def purge_pending(self, before: MessageId, limit: int) -> int:
        return self.store.purge_pending(before, limit)

    def drop_frame_logs(self, before_day: str) -> list[str]:
        return self.store.drop_frame_logs(before_day)


async def test_a_purge_that_dies_between_batches_is_resumed_and_loses_nothing_live(
    messages: LifecycleStore, redis_url: str
) -> None:
    old = [message(NOW - 40 * DAY, n) for n in range(35)]
    live = [message(NOW - DAY, n) for n in range(5)]
    save(messages, old + live, BOB)
    registry = RedisRegistry(redis_url)
    try:
        settings = config(retention_days=30)
        clock = lambda: NOW  # noqa: E731
        crashing = Purger(FailingAfter(messages, 2), registry, BlockingRunner("p", 1), BlockingRunner("r", 1),
                          settings, clock)
        with trio.fail_after(60), pytest.raises(StoreUnavailable):
            await crashing.check()
        assert len(everything(messages)) == len(old) - 20 + len(live)
        assert registry.duty_done(DUTY) is None  # not stamped: the next check runs it again
        assert registry.acquire_duty(DUTY, "another-node", 5)  # the crashed run released its lock
        registry.release_duty(DUTY, "another-node")
        resumed = Purger(messages, registry, BlockingRunner("p", 1), BlockingRunner("r", 1), settings, clock)
        with trio.fail_after(60):
            report = await resumed.check()
            assert report is not None and report.messages == 15
            assert await resumed.check() is None  # stamped done for today
        assert everything(messages) == live
        assert [m.id for m in messages.pending(BOB, MessageId(0), 100)] == [m.id for m in live]
    finally:
        registry.close()


async def test_only_one_process_purges_at_a_time(messages: LifecycleStore, redis_url: str) -> None:
    registry = RedisRegistry(redis_url)
    try:
        assert registry.acquire_duty(DUTY, "node-a", 30)
        purger = Purger(messages, registry, BlockingRunner("p", 1), BlockingRunner("r", 1),
                        config(retention_days=1), lambda: NOW)
        with trio.fail_after(30):
            assert await purger.check() is None
        assert registry.renew_duty(DUTY, "node-a", 30)
        assert not registry.renew_duty(DUTY, purger.owner, 30)
    finally:
        registry.close()


# -- export and import ---------------------------------------------------------------------------


def sample(group_member: UserId = CAROL) -> list[Message]:
    """Friend and group messages with unicode, extend, a recalled and a deleted one."""
    return [
        message(NOW - 3 * DAY, 1, content="héllo ✓", extend={"z": [1, 2**60], "a": {"b": "c"}}),
        message(NOW - 3 * DAY, 2, BOB, ALICE, content="reply"),
        message(NOW - 2 * DAY, 3, ALICE, G1, ChatType.GROUP, content="to the group"),
        message(NOW - 2 * DAY, 4, group_member, G1, ChatType.GROUP, content="from carol"),
        message(NOW - DAY, 5, ALICE, BOB, message_type=MessageType.RECALLED, content=""),
        message(NOW - DAY, 6, ALICE, CAROL, message_type=MessageType.DELETED, content=""),
        message(NOW, 7, CAROL, ALICE, content="to alice"),
    ]


def dump(store: LifecycleStore, selection: Selection) -> str:
    return header() + "".join(message_line(m) for m in exported(store, selection, page=2))


def test_export_of_a_user_is_what_they_sent_and_friend_messages_to_them(messages: LifecycleStore) -> None:
    data = sample()
    save(messages, data)
    ids = [m.id for m in exported(messages, Selection(user_id=ALICE), page=2)]
    assert ids == [data[i].id for i in (0, 1, 2, 4, 5, 6)]
    since = [m.id for m in exported(messages, Selection(user_id=ALICE, since_ms=NOW - DAY), page=2)]
    assert since == [data[i].id for i in (4, 5, 6)]
    group = [m.id for m in exported(messages, Selection(chat_key=f"g{G1}"))]
    assert group == [data[2].id, data[3].id]


def test_export_is_byte_identical_on_sqlite_and_mongo_and_import_round_trips(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    sqlite = SqliteMessages(str(tmp_path / "m.db"))
    mongo = MongoMessages(request.getfixturevalue("mongo_url"))
    moved = SqliteMessages(str(tmp_path / "moved.db"))
    try:
        for store in (sqlite, mongo):
            save(store, sample())
        selections = [Selection(user_id=ALICE), Selection(chat_key=f"g{G1}"), Selection(user_id=CAROL, since_ms=NOW)]
        for selection in selections:
            assert dump(sqlite, selection) == dump(mongo, selection)
        text = dump(mongo, Selection(user_id=ALICE))
        first = import_lines(moved, io.StringIO(text), ImportCount(), batch=2)
        again = import_lines(moved, io.StringIO(text), ImportCount(), batch=2)
        assert (first.created, first.existing) == (6, 0)
        assert (again.created, again.existing) == (0, 6)  # idempotent: nothing twice
        assert dump(moved, Selection(user_id=ALICE)) == text
    finally:
        for store in (sqlite, mongo, moved):
            store.close()


def test_import_refuses_a_file_that_is_not_an_export(messages: LifecycleStore) -> None:
    from vim_cluster.export import BadExportLine

    with pytest.raises(BadExportLine, match="line 1"):
        import_lines(messages, io.StringIO('{"id": 1}\n'), ImportCount())
    with pytest.raises(BadExportLine, match="line 3"):
        import_lines(messages, io.StringIO(header() + message_line(sample()[0]) + "{bad\n"), ImportCount())
    with pytest.raises(BadExportLine, match=r"line 1: .*\(it is empty\)"):
        import_lines(messages, io.StringIO(""), ImportCount())


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("id", "-5", "id '-5' is not a positive 64-bit id"),  # was saved, and no export saw it again
    ("id", str(2**64), "is not a positive 64-bit id"),  # was a traceback (SQLite: OverflowError)
    ("fromId", "0", "fromId '0' is not a positive 64-bit id"),
    ("timestamp", 10**30, "is not a time in ms"),
    ("cid", None, "no 'cid'"),  # said: 'cid'
])
def test_import_refuses_ids_outside_the_64_bit_range_in_one_line_and_saves_nothing(
    messages: LifecycleStore, field: str, value: object, problem: str,
) -> None:
    import json

    from vim_cluster.export import BadExportLine

    line = json.loads(message_line(sample()[0]))
    if value is None:
        del line[field]
    else:
        line[field] = value
    with pytest.raises(BadExportLine, match=f"line 2: .*{problem}") as refused:
        import_lines(messages, io.StringIO(header() + json.dumps(line) + "\n"), ImportCount())
    assert "\n" not in str(refused.value)
    assert everything(messages) == [] and list(exported(messages, Selection(user_id=ALICE))) == []


# -- erasure -------------------------------------------------------------------------------------


def test_erasing_a_sender_leaves_deleted_placeholders_and_forgets_their_offline_rows(
    messages: LifecycleStore,
) -> None:
    data = sample()
    save(messages, data[:4], ALICE, BOB, CAROL)
    erased: list[MessageId] = []
    while ids := messages.erase_sent(ALICE, erased[-1] if erased else MessageId(0), 1):
        erased += ids
    assert erased == [data[0].id, data[2].id]
    assert messages.erase_sent(ALICE, MessageId(0), 10) == [data[0].id, data[2].id]  # idempotent
    friend = everything(messages)
    assert [(m.id, m.message_type, m.content, m.extend) for m in friend] == [
        (data[0].id, MessageType.DELETED, "", None), (data[1].id, MessageType.TEXT, "reply", None),
    ]
    assert friend[0].timestamp == data[0].timestamp and friend[0].from_id == ALICE
    history, _ = messages.history(f"g{G1}", None, 10)
    assert [m.message_type for m in history] == [MessageType.DELETED, MessageType.TEXT]
    messages.set_read_cursor(ALICE, ChatType.GROUP, G1, NOW)
    assert messages.forget_user(ALICE) == 4
    assert messages.pending(ALICE, MessageId(0), 10) == [] and messages.read_cursors(ALICE) == []
    assert [m.message_type for m in messages.pending(BOB, MessageId(0), 10)][0] is MessageType.DELETED
    [confirmed] = messages.confirm(BOB, [data[0].id])  # what a confirm returns is erased too
    assert (confirmed.id, confirmed.message_type, confirmed.content, confirmed.extend) == (
        data[0].id, MessageType.DELETED, "", None)
    assert '"state":"deleted"' in message_line(friend[0])


def test_deleting_a_user_passes_owned_groups_on_and_is_idempotent(directory: UserDirectory) -> None:
    for uid in (ALICE, BOB, CAROL):
        directory.create_user(User(uid, f"user{uid}", "N", "hash"))
    directory.create_group(Group(G1, "shared", ALICE, (ALICE, CAROL, BOB)))
    directory.create_group(Group(GroupId(102), "alone", ALICE, (ALICE,)))
    directory.create_group(Group(GroupId(103), "others", BOB, (BOB, ALICE)))
    assert directory.delete_user(ALICE) is True
    assert directory.delete_user(ALICE) is False
    assert directory.user_by_username(f"user{ALICE}") is None
    assert directory.group(G1) == Group(G1, "shared", BOB, (BOB, CAROL))
    assert directory.group(GroupId(102)) is None
    assert directory.group(GroupId(103)) == Group(GroupId(103), "others", BOB, (BOB,))
    assert [g.id for g in directory.groups_of(BOB)] == [G1, GroupId(103)]


def test_mongo_drops_whole_daily_frame_logs_past_retention(request: pytest.FixtureRequest) -> None:
    from vim_cluster.adapters.mongo_messages import FrameLogEntry

    store = MongoMessages(request.getfixturevalue("mongo_url"))
    try:
        day = lambda d: NOW - d * DAY  # noqa: E731
        store.log_frames([FrameLogEntry("x", ALICE, day(d)) for d in (40, 31, 30, 1)] + [FrameLogEntry("y", BOB, day(1))])
        from vim_cluster.core.retention import plan

        dropped = store.drop_frame_logs(plan(NOW, 30, None).logs_before_day or "")
        assert dropped == ["message-log-20260812", "message-log-20260821"]
        assert store.drop_frame_logs("20260821") == []
        store.forget_user(ALICE)
        names = sorted(n for n in store._db.list_collection_names() if n.startswith("message-log-"))
        assert [store._db[n].count_documents({}) for n in names] == [0, 1]
    finally:
        store.close()


def test_sqlite_erasure_leaves_no_copy_of_the_content_or_the_account_in_the_files(tmp_path: Path) -> None:
    """The erased rows' older versions stayed in `messages.db-wal` / `directory.db-wal` (and in
    the database file until a checkpoint) while the nodes kept the files open: found by grep."""
    from vim_cluster.adapters.sqlite_directory import SqliteDirectory

    files = lambda name: [tmp_path / name, tmp_path / f"{name}-wal"]  # noqa: E731
    node, cli = SqliteMessages(str(tmp_path / "messages.db")), SqliteMessages(str(tmp_path / "messages.db"))
    node_dir, cli_dir = SqliteDirectory(str(tmp_path / "directory.db")), SqliteDirectory(str(tmp_path / "directory.db"))
    try:
        node_dir.create_user(User(ALICE, "alice-the-erased", "Alice Erased", "hash"))
        save(node, [message(NOW, n, content=f"secret words {n}") for n in range(50)], BOB)
        assert all(b"secret words" in f.read_bytes() for f in files("messages.db")[1:])  # the test sees it
        after = MessageId(0)
        while ids := cli.erase_sent(ALICE, after, 20):
            after = ids[-1]
        cli.forget_user(ALICE)
        assert cli_dir.delete_user(ALICE)
        for f in files("messages.db") + files("directory.db"):
            raw = f.read_bytes() if f.exists() else b""
            assert b"secret words" not in raw and b"alice-the-erased" not in raw and b"Alice Erased" not in raw, f
        assert [m.message_type for m in node.pending(BOB, MessageId(0), 100)] == [MessageType.DELETED] * 50
    finally:
        for adapter in (node, cli, node_dir, cli_dir):
            adapter.close()
