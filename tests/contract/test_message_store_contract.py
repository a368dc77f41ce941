"""The MessageStore port's contract, checked on every adapter (SQLite, MongoDB/FerretDB) alike."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import msgspec
import pytest

from vim_cluster.adapters.mongo_base import shard_of
from vim_cluster.adapters.mongo_messages import MongoMessages
from vim_cluster.adapters.sqlite_messages import SqliteMessages
from vim_cluster.errors import NotFound
from vim_cluster.model import (
    ChatType,
    GroupId,
    Message,
    MessageId,
    MessageType,
    ReadCursor,
    UserId,
    chat_key,
)
from vim_cluster.ports import MessageStore, NewMessage

from .conftest import MessagesOpener

pytestmark = pytest.mark.timeout(60)

BASE = 300_000_000_000_000_000  # snowflake-sized: beyond 2**53, so no float may touch an id
T0 = 1_750_000_000_000
ALICE, BOB, CAROL = UserId(BASE + 1), UserId(BASE + 2), UserId(BASE + 3)
G1, G2 = GroupId(BASE + 101), GroupId(BASE + 102)


def mid(n: int) -> MessageId:
    return MessageId(BASE + 1_000_000 + n)


def friend(n: int, sender: UserId = ALICE, to: UserId = BOB, **fields: Any) -> Message:
    return _message(n, sender, to, ChatType.FRIEND, **fields)


def grouped(n: int, sender: UserId = ALICE, group: GroupId = G1, **fields: Any) -> Message:
    return _message(n, sender, group, ChatType.GROUP, **fields)


def _message(n: int, sender: int, chat: int, chat_type: ChatType, **fields: Any) -> Message:
    values: dict[str, Any] = {
        "cid": f"c-{n}", "message_type": MessageType.TEXT, "content": f"hello {n}",
        "extend": None, "timestamp": T0 + n,
    }
    values.update(fields)
    return Message(id=mid(n), from_id=UserId(sender), chat_id=chat, chat_type=chat_type, **values)


def new(message: Message, *pending_for: UserId) -> NewMessage:
    return NewMessage(message, tuple(pending_for))


def to_bob(*ns: int) -> list[NewMessage]:
    return [new(friend(n), BOB) for n in ns]


def test_save_returns_one_result_per_message_in_batch_order(messages: MessageStore) -> None:
    batch = [new(friend(1), BOB), new(grouped(2)), new(friend(3, BOB, ALICE), ALICE), new(grouped(4, group=G2))]
    saved = messages.save_messages(batch)
    assert [s.message for s in saved] == [item.message for item in batch]
    assert all(s.created for s in saved)
    assert messages.save_messages([]) == []


def test_finishing_saves_writes_nothing_for_complete_or_never_begun_messages(messages: MessageStore) -> None:
    done, never = friend(1), friend(2)
    messages.save_messages([new(done, BOB)])
    messages.confirm(BOB, [done.id])
    assert messages.finish_saves([new(done, BOB), new(never, BOB)]) == []
    assert messages.finish_saves([]) == []
    assert messages.get(never.id) is None and messages.get(done.id) == done
    assert messages.history(done.chat_key, None, 10) == ([done], False)
    assert messages.pending(BOB, MessageId(0), 10) == []  # a confirmed message stays confirmed


def test_saving_a_cid_again_returns_the_stored_message_and_adds_nothing(messages: MessageStore) -> None:
    first = friend(1)
    messages.save_messages([new(first, BOB)])
    messages.confirm(BOB, [first.id])
    retry = friend(2, cid=first.cid, content="different", timestamp=T0 + 99)
    [saved] = messages.save_messages([new(retry, BOB, CAROL)])
    assert saved.created is False
    assert saved.message == first
    assert messages.pending(BOB, MessageId(0), 10) == []
    assert messages.pending(CAROL, MessageId(0), 10) == []
    assert messages.history(first.chat_key, None, 10) == ([first], False)
    assert messages.get(retry.id) is None


def test_repeats_within_one_batch_are_saved_once(messages: MessageStore) -> None:
    one, two = friend(1), friend(3)
    again = friend(2, cid=one.cid)
    saved = messages.save_messages([new(one, BOB), new(again, BOB), new(two, BOB), new(again, BOB)])
    assert [(s.message, s.created) for s in saved] == [(one, True), (one, False), (two, True), (one, False)]
    assert messages.pending(BOB, MessageId(0), 10) == [one, two]


def test_cid_is_unique_per_sender_across_conversations(messages: MessageStore) -> None:
    to_bob_first = friend(1, cid="same")
    [in_group] = messages.save_messages([new(to_bob_first, BOB)])
    [repeat] = messages.save_messages([new(grouped(2, cid="same", group=G2))])
    assert (repeat.message, repeat.created) == (to_bob_first, False)
    assert messages.history(chat_key(ChatType.GROUP, ALICE, G2), None, 10) == ([], False)
    [other_sender] = messages.save_messages([new(friend(3, BOB, ALICE, cid="same"), ALICE)])
    assert other_sender.created is True
    assert in_group.created is True


def test_pending_is_oldest_first_and_pages_by_after(messages: MessageStore) -> None:
    messages.save_messages(to_bob(5, 1, 3))
    messages.save_messages(to_bob(2, 4) + [new(friend(6, BOB, ALICE), ALICE)])
    ids = [m.id for m in messages.pending(BOB, MessageId(0), 100)]
    assert ids == [mid(1), mid(2), mid(3), mid(4), mid(5)]
    assert [m.id for m in messages.pending(BOB, MessageId(0), 2)] == [mid(1), mid(2)]
    assert [m.id for m in messages.pending(BOB, mid(2), 2)] == [mid(3), mid(4)]
    assert [m.id for m in messages.pending(BOB, mid(5), 2)] == []
    assert [m.id for m in messages.pending(ALICE, MessageId(0), 10)] == [mid(6)]
    assert messages.pending(CAROL, MessageId(0), 10) == []


def test_a_message_joins_every_offline_set_it_names(messages: MessageStore) -> None:
    message = grouped(1)
    messages.save_messages([new(message, BOB, CAROL, BOB)])
    assert messages.pending(BOB, MessageId(0), 10) == [message]
    assert messages.pending(CAROL, MessageId(0), 10) == [message]


def test_confirm_returns_only_what_was_pending_and_is_idempotent(messages: MessageStore) -> None:
    messages.save_messages(to_bob(1, 2, 3) + [new(friend(4, BOB, ALICE), ALICE)])
    confirmed = messages.confirm(BOB, [mid(3), mid(1), mid(3), mid(4), mid(99)])
    assert sorted(m.id for m in confirmed) == [mid(1), mid(3)]
    assert confirmed[0] in (friend(1), friend(3))
    assert messages.confirm(BOB, [mid(1), mid(3)]) == []
    assert messages.confirm(BOB, []) == []
    assert [m.id for m in messages.pending(BOB, MessageId(0), 10)] == [mid(2)]
    assert [m.id for m in messages.pending(ALICE, MessageId(0), 10)] == [mid(4)]


def test_group_messages_after_filters_by_cursor_and_after(messages: MessageStore) -> None:
    messages.save_messages([
        new(grouped(1, group=G1)), new(grouped(2, group=G2)), new(grouped(3, group=G1)),
        new(friend(4), BOB), new(grouped(5, group=G2)), new(grouped(6, group=G1)),
        new(grouped(7, group=GroupId(BASE + 999))),
    ])
    all_new = messages.group_messages_after({G1: 0, G2: 0}, MessageId(0), 100)
    assert [m.id for m in all_new] == [mid(1), mid(2), mid(3), mid(5), mid(6)]
    by_cursor = messages.group_messages_after({G1: T0 + 1, G2: T0 + 2}, MessageId(0), 100)
    assert [m.id for m in by_cursor] == [mid(3), mid(5), mid(6)]  # strictly newer than the cursor
    after = messages.group_messages_after({G1: 0, G2: 0}, mid(2), 100)
    assert [m.id for m in after] == [mid(3), mid(5), mid(6)]
    limited = messages.group_messages_after({G1: 0, G2: 0}, mid(1), 2)
    assert [m.id for m in limited] == [mid(2), mid(3)]
    assert messages.group_messages_after({}, MessageId(0), 10) == []
    assert all_new[0] == grouped(1, group=G1)


def test_read_cursor_moves_forward_only(messages: MessageStore) -> None:
    assert messages.set_read_cursor(BOB, ChatType.FRIEND, ALICE, T0 + 100) == T0 + 100
    assert messages.set_read_cursor(BOB, ChatType.FRIEND, ALICE, T0 + 50) == T0 + 100
    assert messages.set_read_cursor(BOB, ChatType.FRIEND, ALICE, T0 + 100) == T0 + 100
    assert messages.set_read_cursor(BOB, ChatType.GROUP, G1, T0 + 7) == T0 + 7
    assert messages.set_read_cursor(BOB, ChatType.FRIEND, ALICE, T0 + 200) == T0 + 200
    assert messages.set_read_cursor(ALICE, ChatType.FRIEND, BOB, T0 + 1) == T0 + 1
    cursors = sorted(messages.read_cursors(BOB), key=lambda c: (c.chat_type.value, c.chat_id))
    assert cursors == [ReadCursor(ChatType.FRIEND, ALICE, T0 + 200), ReadCursor(ChatType.GROUP, G1, T0 + 7)]
    assert messages.read_cursors(CAROL) == []


def test_history_pages_oldest_first_and_says_whether_more_exist(messages: MessageStore) -> None:
    chat = [friend(n) if n % 2 else friend(n, BOB, ALICE) for n in range(1, 8)]  # both directions
    noise = [new(friend(20, ALICE, CAROL), CAROL), new(grouped(21))]
    messages.save_messages([new(m, UserId(m.chat_id)) for m in chat[:4]] + noise)
    messages.save_messages([new(m, UserId(m.chat_id)) for m in chat[4:]])
    key = chat[0].chat_key
    assert chat[1].chat_key == key
    assert messages.history(key, None, 3) == (chat[4:7], True)
    assert messages.history(key, chat[4].id, 3) == (chat[1:4], True)
    assert messages.history(key, chat[1].id, 3) == (chat[0:1], False)
    assert messages.history(key, None, 7) == (chat, False)
    assert messages.history(key, None, 100) == (chat, False)
    assert messages.history(key, chat[0].id, 10) == ([], False)
    assert messages.history(chat_key(ChatType.FRIEND, BOB, CAROL), None, 10) == ([], False)
    assert messages.history(chat_key(ChatType.GROUP, ALICE, G1), None, 10) == ([grouped(21)], False)


def test_get_returns_the_message_or_none(messages: MessageStore) -> None:
    message = friend(1, extend={"k": 1})
    messages.save_messages([new(message, BOB)])
    assert messages.get(message.id) == message
    assert messages.get(mid(2)) is None


def test_recall_empties_the_message_everywhere_and_is_idempotent(messages: MessageStore) -> None:
    message = friend(1, message_type=MessageType.IMAGE, extend={"url": "x"})
    messages.save_messages([new(message, BOB)])
    recalled = messages.recall(message.id)
    assert recalled.message_type is MessageType.RECALLED and recalled.content == ""
    assert recalled.extend is None  # an image's URL, a file's name: recalled with its content
    assert (recalled.id, recalled.cid, recalled.from_id, recalled.timestamp) == (message.id, message.cid, ALICE, message.timestamp)
    assert messages.recall(message.id) == recalled
    assert messages.get(message.id) == recalled
    assert messages.history(message.chat_key, None, 10) == ([recalled], False)
    assert messages.pending(BOB, MessageId(0), 10) == [recalled]
    [repeat] = messages.save_messages([new(friend(2, cid=message.cid), BOB)])
    assert (repeat.message, repeat.created) == (recalled, False)
    assert messages.confirm(BOB, [message.id]) == [recalled]  # what a confirm returns is recalled too
    with pytest.raises(NotFound):
        messages.recall(mid(404))


def _recall_as_an_older_node(messages: MessageStore, message: Message) -> None:
    """What a node of the release before 2026-12-03 (4b4c6e9) wrote for a recall, in plain
    data: the type and the empty content, the extend left as it was (on MongoDB: in the
    claim's copy and the document, the offline rows' string copies dropped)."""
    recalled = {"message_type": MessageType.RECALLED.value, "content": ""}
    if isinstance(messages, SqliteMessages):
        with contextlib.closing(sqlite3.connect(messages._db.path)) as conn, conn:
            conn.execute("UPDATE messages SET message_type = ?, content = '' WHERE id = ?", (recalled["message_type"], message.id))
        return
    assert isinstance(messages, MongoMessages)
    messages._pending.update_many({"message_id": message.id}, {"$unset": {"message_json": ""}})
    messages._claims.update_one({"_id": message.id}, {"$set": {f"message.{k}": v for k, v in recalled.items()}})
    messages._shards[shard_of(message.chat_key, len(messages._shards))].update_one({"_id": message.id}, {"$set": recalled})


def test_a_message_an_older_node_recalled_is_read_without_its_extend(messages: MessageStore) -> None:
    """During a rolling upgrade, a recall through a node of the earlier release leaves the
    extend (an image's URL, a file's name) in the store: the upgraded nodes show the recalled
    message without it in history, offline replay, confirms and get (export reads the same)."""
    message = friend(1, message_type=MessageType.FILE, extend={"fileName": "plan.pdf"})
    messages.save_messages([new(message, BOB)])
    _recall_as_an_older_node(messages, message)
    recalled = msgspec.structs.replace(message, message_type=MessageType.RECALLED, content="", extend=None)
    assert messages.get(message.id) == recalled
    assert messages.history(message.chat_key, None, 10) == ([recalled], False)
    assert messages.pending(BOB, MessageId(0), 10) == [recalled]
    assert messages.confirm(BOB, [message.id]) == [recalled]


def test_chinese_emoji_and_extend_round_trip(messages: MessageStore) -> None:
    content = '你好，世界！😀👍🏽👨‍👩‍👧 "quoted" \\ back\nnew line \t tab مرحبا'
    extend = {"fileName": "报告 📄.pdf", "size": 12_345, "nested": {"a.b": [1, 2.5, "😀", None]}, "$odd": True}
    message = friend(1, cid="客户端-1😀", content=content, extend=extend, message_type=MessageType.FILE)
    messages.save_messages([new(message, BOB)])
    assert messages.get(message.id) == message
    assert messages.pending(BOB, MessageId(0), 1) == [message]
    assert messages.history(message.chat_key, None, 1) == ([message], False)
    [repeat] = messages.save_messages([new(friend(2, cid="客户端-1😀"), BOB)])
    assert (repeat.message, repeat.created) == (message, False)


def test_a_saved_batch_survives_reopening(open_messages: MessagesOpener) -> None:
    first = open_messages()
    batch = to_bob(1, 2) + [new(grouped(3))]
    first.save_messages(batch)
    first.set_read_cursor(BOB, ChatType.GROUP, G1, T0 + 5)
    first.close()
    second = open_messages()
    assert [m.id for m in second.pending(BOB, MessageId(0), 10)] == [mid(1), mid(2)]
    assert second.get(mid(3)) == grouped(3)
    assert second.read_cursors(BOB) == [ReadCursor(ChatType.GROUP, G1, T0 + 5)]
    [repeat] = second.save_messages([new(friend(9, cid=friend(1).cid), BOB)])
    assert repeat.created is False and repeat.message == friend(1)


def test_a_checkpoint_keeps_everything_as_it_was(messages: MessageStore) -> None:
    # The node's store writer calls it in a worker thread where `checkpoints` (SQLite with
    # `vim.store.sync: normal`); any store answers it.
    messages.save_messages(to_bob(1, 2))
    messages.checkpoint()
    assert [m.id for m in messages.pending(BOB, MessageId(0), 10)] == [mid(1), mid(2)]
    assert messages.get(mid(2)) == friend(2)


def test_a_large_batch_across_many_conversations_keeps_its_order(messages: MessageStore) -> None:
    peers = [UserId(BASE + 500 + p) for p in range(40)]
    groups = [GroupId(BASE + 900 + g) for g in range(12)]
    batch: list[NewMessage] = []
    for n in range(400):
        if n % 4 == 0:
            batch.append(new(grouped(n, group=groups[n % len(groups)])))
        else:
            peer = peers[n % len(peers)]
            batch.append(new(friend(n, ALICE, peer), peer))
    saved = messages.save_messages(batch)
    assert [s.message.id for s in saved] == [item.message.id for item in batch]
    assert all(s.created for s in saved)
    again = messages.save_messages(batch)
    assert [s.message for s in again] == [item.message for item in batch]
    assert not any(s.created for s in again)
    peer = peers[1]
    assert [m.id for m in messages.pending(peer, MessageId(0), 100)] == [
        item.message.id for item in batch if item.pending_for == (peer,)
    ]
    cursors = {g: 0 for g in groups}
    assert len(messages.group_messages_after(cursors, MessageId(0), 1000)) == 100


# ---------------------------------------------------------------- read state (issue 13)


def test_pending_among_says_which_messages_are_not_yet_delivered(messages: MessageStore) -> None:
    messages.save_messages(to_bob(1, 2, 3))
    messages.confirm(BOB, [mid(2)])
    assert messages.pending_among(BOB, [mid(1), mid(2), mid(3), mid(99)]) == {mid(1), mid(3)}
    assert messages.pending_among(ALICE, [mid(1)]) == set()
    assert messages.pending_among(BOB, []) == set()


def test_group_cursors_list_every_reader_of_the_group(messages: MessageStore) -> None:
    messages.set_read_cursor(ALICE, ChatType.GROUP, G1, T0 + 5)
    messages.set_read_cursor(BOB, ChatType.GROUP, G1, T0 + 2)
    messages.set_read_cursor(BOB, ChatType.GROUP, G2, T0 + 9)
    messages.set_read_cursor(CAROL, ChatType.FRIEND, G1, T0 + 9)  # a friend chat, not the group
    assert messages.group_cursors(G1) == {ALICE: T0 + 5, BOB: T0 + 2}
    assert messages.group_cursors(GroupId(BASE + 999)) == {}


def test_unread_counts_count_others_messages_after_the_cursor(messages: MessageStore) -> None:
    messages.save_messages(to_bob(1, 2, 3) + [new(friend(4, sender=BOB, to=ALICE), ALICE)])
    messages.save_messages([new(grouped(5)), new(grouped(6, sender=BOB)), new(grouped(7, sender=CAROL))])
    with_bob = chat_key(ChatType.FRIEND, ALICE, BOB)
    group = chat_key(ChatType.GROUP, 0, G1)
    empty = chat_key(ChatType.FRIEND, BOB, CAROL)
    counts = messages.unread_counts(BOB, {with_bob: T0 + 1, group: 0, empty: 0})
    assert counts == {with_bob: 2, group: 2}  # alice's 2 and 3; alice's 5 and carol's 7
    assert messages.unread_counts(ALICE, {with_bob: 0, group: T0 + 6}) == {with_bob: 1, group: 1}
    assert messages.unread_counts(ALICE, {}) == {}
    many = {chat_key(ChatType.FRIEND, ALICE, UserId(BASE + 10_000 + n)): 0 for n in range(450)}
    assert messages.unread_counts(ALICE, {**many, with_bob: 0}) == {with_bob: 1}


def test_sent_after_pages_a_senders_friend_and_group_messages_oldest_first(messages: MessageStore) -> None:
    messages.save_messages([new(friend(1), BOB), new(grouped(2)), new(friend(3, BOB, ALICE), ALICE),
                            new(friend(4, ALICE, CAROL), CAROL), new(grouped(5, group=G2)), new(grouped(6, CAROL))])
    assert [m.id for m in messages.sent_after(ALICE, MessageId(0), 10)] == [mid(1), mid(2), mid(4), mid(5)]
    assert [m.id for m in messages.sent_after(ALICE, MessageId(0), 2)] == [mid(1), mid(2)]
    assert [m.id for m in messages.sent_after(ALICE, mid(2), 2)] == [mid(4), mid(5)]
    assert messages.sent_after(ALICE, mid(5), 2) == []
    assert messages.sent_after(BOB, MessageId(0), 10) == [friend(3, BOB, ALICE)]
    messages.confirm(BOB, [mid(1)])  # a confirmed message is still a sent one
    assert messages.sent_after(ALICE, MessageId(0), 1) == [friend(1)]
