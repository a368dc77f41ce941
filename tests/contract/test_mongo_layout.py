"""What the MongoDB message store promises beyond the port: V-IM's layout, indexes, the
idempotent save without transactions (and a commit cut off part way finished by the node that
ran it: `finish_saves`, called by the store writer), write concern and the daily frame log."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import trio
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure

from vim_cluster.adapters import mongo_messages
from vim_cluster.adapters.mongo_base import message_doc, open_client, shard_of
from vim_cluster.adapters.mongo_messages import FrameLogEntry, MongoMessages
from vim_cluster.errors import StoreUnavailable
from vim_cluster.ids import EPOCH_MS, SEQUENCE_BITS, WORKER_BITS
from vim_cluster.model import ChatType, GroupId, Message, MessageId, UserId, chat_key
from vim_cluster.node.blocking import BlockingRunner
from vim_cluster.node.store_writer import StoreWriter
from vim_cluster.ports import Confirm, NewMessage, Saved

from .test_message_store_contract import ALICE, BOB, CAROL, G1, friend, grouped, new, to_bob

pytestmark = pytest.mark.timeout(60)
T = 1_760_000_000_000


@pytest.fixture
def raw(mongo_url: str) -> Iterator[Database]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    with client:
        yield client.get_default_database()


@pytest.fixture
def store(mongo_url: str, request: pytest.FixtureRequest) -> Iterator[MongoMessages]:
    """The store; `by_pair` (indirect parameter) overrides how a retry looks its claims up."""
    adapter = MongoMessages(mongo_url)
    by_pair = getattr(request, "param", None)
    if by_pair is not None:
        adapter._by_pair = by_pair
    yield adapter
    adapter.close()


# A retry's lookups: one query for all pairs (MongoDB, FerretDB on SQLite) or one per pair
# (FerretDB on PostgreSQL, which pushes the pair's equalities down to SQL): both on this server.
either_lookup = pytest.mark.parametrize("store", [False, True], indirect=True, ids=["one-query", "by-pair"])


def test_messages_land_in_their_conversations_shard_with_vim_field_names(store: MongoMessages, raw: Database) -> None:
    there, back, in_group = friend(1), friend(2, BOB, ALICE), grouped(3)
    store.save_messages([new(there, BOB), new(back, ALICE), new(in_group)])
    assert there.chat_key == back.chat_key
    for message in (there, back, in_group):
        doc = raw[f"chat_message_{shard_of(message.chat_key, 16)}"].find_one({"_id": message.id})
        assert doc is not None
        assert set(doc) == {"_id", "cid", "from_id", "chat_id", "chat_type", "message_type", "content",
                            "extend", "timestamp", "chat_key"}
    total = sum(raw[f"chat_message_{n}"].count_documents({}) for n in range(16))
    assert total == 3


def test_snowflake_conversations_spread_over_the_shards() -> None:
    # Ids minted 1 ms apart by one worker: their low 12 bits (the sequence) are all 0.
    ids = [((T + n) - EPOCH_MS) << (WORKER_BITS + SEQUENCE_BITS) | (7 << SEQUENCE_BITS) for n in range(200)]
    group_shards = {shard_of(chat_key(ChatType.GROUP, 0, i), 16) for i in ids}
    friend_shards = {shard_of(chat_key(ChatType.FRIEND, ids[0], i), 16) for i in ids[1:]}
    assert len(group_shards) == 16 and len(friend_shards) == 16



def test_split_is_a_constructor_argument_fixed_for_the_database(mongo_url: str, raw: Database) -> None:
    four = MongoMessages(mongo_url, split=4)
    four.save_messages([new(grouped(n, group=GroupId(G1 + n))) for n in range(20)])
    four.close()
    shards = sorted(c for c in raw.list_collection_names() if c.startswith("chat_message_"))
    assert shards == ["chat_message_0", "chat_message_1", "chat_message_2", "chat_message_3"]
    with pytest.raises(ValueError, match="split=4"):
        MongoMessages(mongo_url, split=16)


def test_every_query_has_an_index(store: MongoMessages, raw: Database) -> None:
    def keys(collection: str) -> list[list[tuple[str, int]]]:
        return [info["key"] for info in raw[collection].index_information().values()]

    assert [("chat_key", 1), ("_id", 1)] in keys("chat_message_0")
    assert [("chat_key", 1), ("_id", 1)] in keys("chat_message_15")
    claims = raw["message_ids"].index_information()
    assert any(i["key"] == [("from_id", 1), ("cid", 1)] and i.get("unique") for i in claims.values())
    pending = raw["pending_messages"].index_information()
    assert any(i["key"] == [("user_id", 1), ("message_id", 1)] and i.get("unique") for i in pending.values())
    assert [("user_id", 1)] in keys("read_cursors")


def older_claim(store: MongoMessages, message: Message) -> dict[str, Any]:
    """A claim as nodes that wrote intents (before session 18) wrote it: no copy."""
    return {k: v for k, v in store._claim(new(message, BOB)).items() if k not in ("message", "pending_for")}


def older_intent(store: MongoMessages, message: Message) -> dict[str, Any]:
    """The intent an older node wrote before its claim: the message's copy and recipients."""
    return {"_id": message.id, "shard": shard_of(message.chat_key, 16), "message": message_doc(message),
            "pending_for": [BOB]}


def test_a_save_writes_its_claim_with_the_copy_and_no_intent(store: MongoMessages, raw: Database) -> None:
    first = friend(1)
    store.save_messages([new(first, BOB, CAROL)])
    claim = raw["message_ids"].find_one({"_id": first.id})
    assert claim == {"_id": first.id, "from_id": ALICE, "cid": first.cid, "shard": shard_of(first.chat_key, 16),
                     "message": message_doc(first), "pending_for": [BOB, CAROL]}
    assert raw["message_intents"].count_documents({}) == 0


@either_lookup
def test_a_save_cut_off_after_its_claim_is_finished_by_the_retry_under_its_first_id(
    store: MongoMessages, raw: Database
) -> None:
    first = friend(1)
    raw["message_ids"].insert_one(store._claim(new(first, BOB)))  # the crash: only step 1 ran
    assert store.get(first.id) is None and store.pending(BOB, MessageId(0), 10) == []
    [retry] = store.save_messages([new(friend(2, cid=first.cid, content="retried"), BOB)])
    assert (retry.message, retry.created) == (first, True)
    assert store.pending(BOB, MessageId(0), 10) == [first]
    assert store.history(first.chat_key, None, 10) == ([first], False)
    [repeat] = store.save_messages([new(friend(3, cid=first.cid), BOB)])
    assert (repeat.message, repeat.created) == (first, False)
    assert store.pending(BOB, MessageId(0), 10) == [first]  # a repeat writes no row again


@either_lookup
def test_a_save_cut_off_before_its_document_is_replayed_and_finished_by_the_retry(
    store: MongoMessages, raw: Database
) -> None:
    first = friend(1)
    raw["message_ids"].insert_one(store._claim(new(first, BOB)))  # the crash: steps 1-2 ran
    raw["pending_messages"].insert_many(store._rows([BOB], first.id, shard_of(first.chat_key, 16), message_doc(first)))
    assert store.get(first.id) is None and store.history(first.chat_key, None, 10) == ([], False)
    assert store.pending(BOB, MessageId(0), 10) == [first]  # the row's copy: before history
    [retry] = store.save_messages([new(friend(2, cid=first.cid), BOB)])
    assert (retry.message, retry.created) == (first, True)  # no call had reported it saved
    assert store.get(first.id) == first
    assert store.pending(BOB, MessageId(0), 10) == [first]  # one row, not two


def test_a_save_cut_off_before_its_document_may_give_a_confirmed_message_once_more(
    store: MongoMessages, raw: Database
) -> None:
    first = friend(1)
    store.save_messages([new(first, BOB)])
    raw[f"chat_message_{shard_of(first.chat_key, 16)}"].delete_one({"_id": first.id})  # as if step 3 failed
    assert [m.id for m in store.confirm(BOB, [first.id])] == [first.id]  # replayed and confirmed
    [retry] = store.save_messages([new(friend(2, cid=first.cid), BOB)])
    assert (retry.message, retry.created) == (first, True)  # no call had reported it saved
    # The retry cannot tell a confirmed row from one never written: at least once, and the
    # client drops the repeat by id (PROTOCOL.md 2.3).
    assert store.pending(BOB, MessageId(0), 10) == [first]


def test_a_save_whose_offline_rows_fail_writes_no_document_so_the_retry_finishes_it(
    store: MongoMessages, raw: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = friend(1)
    real = mongo_messages.insert_new

    def rows_fail(collection: Any, docs: Any) -> set[int]:
        if collection.name == "pending_messages":
            raise ConnectionFailure("cut off")
        return real(collection, docs)

    monkeypatch.setattr(mongo_messages, "insert_new", rows_fail)
    with pytest.raises(StoreUnavailable):
        store.save_messages([new(first, BOB)])
    monkeypatch.setattr(mongo_messages, "insert_new", real)
    assert store.get(first.id) is None  # the document is written last: it marks the save done
    [retry] = store.save_messages([new(friend(2, cid=first.cid), BOB)])
    assert (retry.message, retry.created) == (first, True)
    assert store.pending(BOB, MessageId(0), 10) == [first] and store.get(first.id) == first


@either_lookup
def test_an_older_nodes_save_cut_off_after_its_claim_is_finished_from_its_intent(
    store: MongoMessages, raw: Database
) -> None:
    first = friend(1)
    raw["message_intents"].insert_one(older_intent(store, first))  # steps 1-2 of the intent era
    raw["message_ids"].insert_one(older_claim(store, first))
    [retry] = store.save_messages([new(friend(2, cid=first.cid, content="retried"), BOB)])
    assert (retry.message, retry.created) == (first, True)
    assert store.pending(BOB, MessageId(0), 10) == [first]
    assert store.history(first.chat_key, None, 10) == ([first], False)
    assert raw["message_intents"].count_documents({}) == 0
    [repeat] = store.save_messages([new(friend(3, cid=first.cid), BOB)])
    assert (repeat.message, repeat.created) == (first, False)


def test_an_older_nodes_save_cut_off_before_its_offline_rows_gets_them_from_the_retry(
    store: MongoMessages, raw: Database
) -> None:
    first, done = friend(1), friend(2)
    raw["message_intents"].insert_one(older_intent(store, first))  # steps 1-3 of the intent era
    raw["message_ids"].insert_many([older_claim(store, first), older_claim(store, done)])
    for message in (first, done):  # `done`: finished by the older node (its intent deleted)
        raw[f"chat_message_{shard_of(message.chat_key, 16)}"].insert_one(message_doc(message))
    assert store.get(first.id) == first and store.pending(BOB, MessageId(0), 10) == []
    retry, repeat = store.save_messages([new(friend(3, cid=first.cid), BOB), new(friend(4, cid=done.cid), BOB)])
    assert (retry.message, retry.created) == (first, True)  # no call had reported it saved
    assert (repeat.message, repeat.created) == (done, False)
    assert store.pending(BOB, MessageId(0), 10) == [first]  # its row, written by the retry
    assert raw["message_intents"].count_documents({}) == 0


def test_recall_and_erasure_change_every_copy(store: MongoMessages, raw: Database) -> None:
    one, two, older = friend(1), friend(2), friend(3)
    store.save_messages([new(one, BOB), new(two, BOB), new(older, BOB)])
    raw["pending_messages"].update_one({"message_id": older.id}, {"$unset": {"message_json": ""},
                                                                 "$set": {"message": message_doc(older)}})
    recalled = store.recall(one.id)
    claim = raw["message_ids"].find_one({"_id": one.id})
    assert claim is not None and (claim["message"]["message_type"], claim["message"]["content"]) == ("recalled", "")
    row = raw["pending_messages"].find_one({"message_id": one.id})
    assert row is not None and "message_json" not in row and "message" not in row  # read through the shard
    assert store.pending(BOB, MessageId(0), 10) == [recalled, two, older]
    assert store.erase_sent(ALICE, MessageId(0), 10) == [one.id, two.id, older.id]
    for message in (one, two, older):
        claim = raw["message_ids"].find_one({"_id": message.id})
        assert claim is not None and (claim["message"]["message_type"], claim["message"]["content"]) == ("deleted", "")
        row = raw["pending_messages"].find_one({"message_id": message.id})
        assert row is not None and "message_json" not in row
    row = raw["pending_messages"].find_one({"message_id": older.id})
    assert row is not None and row["message"]["content"] == ""
    erased = store.pending(BOB, MessageId(0), 10)
    assert [(m.id, m.message_type.value, m.content) for m in erased] == [
        (one.id, "deleted", ""), (two.id, "deleted", ""), (older.id, "deleted", "")]


def test_confirms_and_replay_take_the_offline_rows_copies_not_the_shards(
    store: MongoMessages, raw: Database
) -> None:
    one, two = friend(1, extend={"k": [1, 2**62]}, content="中文😀 \u0001"), friend(2)
    store.save_messages([new(one, BOB), new(two, BOB)])
    row = raw["pending_messages"].find_one({"user_id": BOB, "message_id": one.id})
    assert row is not None and set(row) == {"_id", "user_id", "message_id", "shard", "message_json"}
    assert json.loads(row["message_json"]) == message_doc(one)  # one string, not a document
    # a row of an older node carries its copy as a document: read without the shard too
    raw["pending_messages"].update_one({"message_id": two.id}, {"$unset": {"message_json": ""},
                                                               "$set": {"message": message_doc(two)}})

    def no_shard(refs: Iterable[tuple[int, int]]) -> dict[int, Message]:
        assert not list(refs), "a shard was read"
        return {}

    store._fetch = no_shard  # type: ignore[method-assign]
    assert store.pending(BOB, MessageId(0), 10) == [one, two]
    assert store.confirm(BOB, [one.id]) == [one]


def test_a_row_an_older_node_recalled_is_read_through_its_shard(store: MongoMessages, raw: Database) -> None:
    one = friend(1)
    store.save_messages([new(one, BOB)])
    # an older node's recall: the fields set in a `message` document beside the string, then the shard
    recalled = {"message_type": "recalled", "content": ""}
    raw["pending_messages"].update_many({"message_id": one.id}, {"$set": {f"message.{k}": v for k, v in recalled.items()}})
    raw[f"chat_message_{shard_of(one.chat_key, 16)}"].update_one({"_id": one.id}, {"$set": recalled})
    [replayed] = store.pending(BOB, MessageId(0), 10)
    assert (replayed.id, replayed.message_type.value, replayed.content) == (one.id, "recalled", "")


def test_an_offline_row_from_before_copies_is_read_through_its_shard(store: MongoMessages, raw: Database) -> None:
    old, unfinished = friend(1), friend(2)
    store.save_messages([new(old, BOB)])
    raw["pending_messages"].update_one({"message_id": old.id}, {"$unset": {"message": ""}})
    # the old order wrote the rows before the document: a row whose message is not visible
    raw["pending_messages"].insert_one({"user_id": BOB, "message_id": unfinished.id,
                                        "shard": shard_of(unfinished.chat_key, 16)})
    assert store.pending(BOB, MessageId(0), 10) == [old]
    assert store.confirm(BOB, [old.id, unfinished.id]) == [old]
    assert raw["pending_messages"].count_documents({"user_id": BOB}) == 1  # the unfinished stays


@either_lookup
def test_claims_from_before_intents_are_finished_from_their_own_copy_or_done(
    store: MongoMessages, raw: Database
) -> None:
    first, done = friend(1), friend(2)
    unfinished = {**older_claim(store, first), "message": message_doc(first), "pending_for": [BOB]}
    raw["message_ids"].insert_many([unfinished, {**older_claim(store, done), "done": True}])
    raw[f"chat_message_{shard_of(done.chat_key, 16)}"].insert_one(message_doc(done))
    retry, repeat = store.save_messages([new(friend(3, cid=first.cid), BOB), new(friend(4, cid=done.cid), BOB)])
    assert (retry.message, retry.created) == (first, True)
    assert (repeat.message, repeat.created) == (done, False)
    assert store.pending(BOB, MessageId(0), 10) == [first]
    assert raw["message_ids"].find_one({"_id": first.id}) == unfinished  # now a claim like any other
    [again] = store.save_messages([new(friend(5, cid=first.cid), BOB)])
    assert (again.message, again.created) == (first, False)


def test_one_commit_confirms_for_several_users_and_counts_a_repeated_id_once(store: MongoMessages) -> None:
    one, two = friend(1), friend(2, ALICE, BOB)
    store.save_messages([new(one, BOB), new(two, BOB)])
    saved, removed = store.commit([], [Confirm(BOB, (one.id,)), Confirm(BOB, (one.id, two.id)),
                                       Confirm(ALICE, (one.id,))])
    assert saved == [] and removed == [[one], [two], []]
    assert store.pending(BOB, MessageId(0), 10) == []


def test_write_concern_is_journaled_w1_unless_the_url_says_otherwise(mongo_url: str) -> None:
    with open_client(mongo_url) as client:
        assert client.write_concern.document == {"w": 1, "j": True}
        assert client.options.server_selection_timeout == 3
    with open_client(f"{mongo_url}?w=1&journal=false&serverSelectionTimeoutMS=1500") as client:
        assert client.write_concern.document == {"w": 1, "j": False}
        assert client.options.server_selection_timeout == 1.5


def test_log_frames_appends_to_daily_collections(store: MongoMessages, raw: Database) -> None:
    day1 = int(dt.datetime(2025, 3, 1, 23, 59, tzinfo=dt.UTC).timestamp() * 1000)
    day2 = day1 + 2 * 60 * 1000
    store.log_frames([
        FrameLogEntry('{"code":"message"}', ALICE, day1),
        FrameLogEntry("中文😀", BOB, day2),
        FrameLogEntry("ping", UserId(ALICE), day2),
    ])
    store.log_frames([])
    first = list(raw["message-log-20250301"].find({}, {"_id": 0}))
    assert first == [{"content": '{"code":"message"}', "senderId": ALICE, "sendTime": day1}]
    second = sorted(raw["message-log-20250302"].find({}, {"_id": 0}), key=lambda d: d["content"])
    assert [d["content"] for d in second] == ["ping", "中文😀"]


# -- a commit cut off part way, finished by its node -----------------------------------------


def test_a_save_cut_off_before_its_document_is_finished_under_its_first_id(store: MongoMessages, raw: Database) -> None:
    first = friend(1)
    raw["message_ids"].insert_one(store._claim(new(first, BOB, CAROL)))  # the cut: steps 1-2 ran
    raw["pending_messages"].insert_many(store._rows([BOB], first.id, shard_of(first.chat_key, 16), message_doc(first)))
    assert store.pending(BOB, MessageId(0), 10) == [first] and store.get(first.id) is None  # half-visible
    later = friend(2, cid=first.cid, content="the node's own copy")  # the node kept the same NewMessage
    assert store.finish_saves([new(later, BOB, CAROL)]) == [first]
    assert store.get(first.id) == first and store.history(first.chat_key, None, 10) == ([first], False)
    assert store.pending(BOB, MessageId(0), 10) == [first]  # one row, not two
    assert store.pending(CAROL, MessageId(0), 10) == [first]  # the row the cut had not written
    assert store.finish_saves([new(first, BOB, CAROL)]) == []  # idempotent
    [repeat] = store.save_messages([new(first, BOB, CAROL)])  # the sender's retry, after
    assert (repeat.message, repeat.created) == (first, False)


@either_lookup
def test_a_save_cut_off_after_its_claim_is_finished_and_one_that_left_no_trace_is_not(
    store: MongoMessages, raw: Database
) -> None:
    claimed, untouched = friend(1), friend(2)
    raw["message_ids"].insert_one(store._claim(new(claimed, BOB)))  # the cut: only step 1 ran
    assert store.finish_saves([new(claimed, BOB), new(untouched, BOB)]) == [claimed]
    assert store.pending(BOB, MessageId(0), 10) == [claimed] and store.get(claimed.id) == claimed
    assert store.get(untouched.id) is None  # its sender was told it failed: it stays unsaved
    assert raw["message_ids"].count_documents({"_id": untouched.id}) == 0


def test_on_ferretdb_with_postgresql_a_retry_looks_up_by_equalities_it_pushes_down(
    ferretdb_on_postgresql: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FerretDB 1.x decodes every document a query reads unless the filter goes down to SQL;
    an `$or` of the (from_id, cid) pairs or an `$in` of ids read every claim and a whole shard
    at each retry (1.2 s with 5,000 messages stored, session 21)."""
    store = MongoMessages(ferretdb_on_postgresql)
    client: MongoClient[dict[str, Any]] = MongoClient(ferretdb_on_postgresql, serverSelectionTimeoutMS=5000)
    try:
        assert store._by_pair
        done, unfinished = friend(1), friend(2)
        store.save_messages([new(done, BOB)] + to_bob(*range(10, 30)))
        raw = client.get_default_database()
        raw["message_ids"].insert_one(store._claim(new(unfinished, BOB)))  # the cut: only step 1 ran
        asked: list[tuple[str, dict[str, Any]]] = []
        find_one = Collection.find_one

        def spy(self: Collection[Any], query: Any = None, *args: Any, **kwargs: Any) -> Any:
            asked.append((self.name, query))
            return find_one(self, query, *args, **kwargs)

        monkeypatch.setattr(Collection, "find_one", spy)
        repeat, retry = store.save_messages([new(friend(3, cid=done.cid), BOB), new(friend(4, cid=unfinished.cid), BOB)])
        monkeypatch.undo()
        assert (repeat.message, repeat.created) == (done, False)
        assert (retry.message, retry.created) == (unfinished, True)
        assert store.get(unfinished.id) == unfinished
        shard = f"chat_message_{shard_of(done.chat_key, 16)}"
        assert sorted(name for name, _ in asked) == sorted(["message_ids", "message_ids", shard, shard])

        def pushed_down(collection: str, query: dict[str, Any]) -> bool:
            plan = raw.command("explain", {"find": collection, "filter": query}, verbosity="queryPlanner")
            return plan["filterPushdown"] is True

        assert all(pushed_down(name, query) for name, query in asked)
        # what one query for all pairs would ask: read whole by FerretDB
        assert not pushed_down("message_ids", {"$or": [{"from_id": ALICE, "cid": {"$in": [done.cid, unfinished.cid]}}]})
    finally:
        client.close()
        store.close()


class Cut:
    """`insert_new` failing for the collections named, `times` times in all, then working."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, prefix: str, times: float) -> None:
        self.real = mongo_messages.insert_new
        self.prefix, self.left = prefix, times
        monkeypatch.setattr(mongo_messages, "insert_new", self)

    def __call__(self, collection: Any, docs: Any) -> set[int]:
        if collection.name.startswith(self.prefix) and self.left > 0:
            self.left -= 1
            raise ConnectionFailure("cut off")
        return self.real(collection, docs)


class Attempts:
    """The writer's runner, reporting each finish_saves outcome (messages or error) to the test once
    the writer has taken it (the writer goes on to its next wait before the test runs)."""

    def __init__(self, store: MongoMessages) -> None:
        self.runner = BlockingRunner("messages", 1)
        self.finish = store.finish_saves
        self.send, self.receive = trio.open_memory_channel[list[Message] | BaseException](math.inf)

    async def __call__(self, fn: Any, *args: Any) -> Any:
        try:
            result = await self.runner(fn, *args)
        except StoreUnavailable as exc:
            if fn == self.finish:
                self.send.send_nowait(exc)
            raise
        if fn == self.finish:
            self.send.send_nowait(result)
        return result


async def failed_commit(writer: StoreWriter, nursery: trio.Nursery, *messages: NewMessage) -> list[Any]:
    """Runs the writer and submits `messages` in one commit; every sender's error."""
    errors: list[Any] = []
    told = trio.Event()

    def on_done(saved: Saved | None, error: BaseException | None) -> None:
        errors.append(error)
        if len(errors) == len(messages):
            told.set()

    for message in messages:
        writer.submit(message, on_done)
    nursery.start_soon(writer.run)
    await told.wait()
    return errors


async def test_the_writer_finishes_a_commit_cut_off_before_its_documents_once_the_store_answers(
    store: MongoMessages, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = friend(1)
    Cut(monkeypatch, "chat_message_", times=2)  # the commit and the writer's first try
    attempts = Attempts(store)
    writer = StoreWriter(store, attempts, finish_retry_s=0.01)  # type: ignore[arg-type]
    delivered: list[list[Message]] = []

    async def on_finished(messages: list[Message]) -> None:
        delivered.append(messages)

    writer.on_finished = on_finished
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            errors = await failed_commit(writer, nursery, new(first, BOB))
            assert [type(e) for e in errors] == [StoreUnavailable]
            assert isinstance(await attempts.receive.receive(), StoreUnavailable)  # the store still failing
            assert await attempts.receive.receive() == [first]
            nursery.cancel_scope.cancel()
    assert delivered == [[first]]  # the node delivers them (node/handlers/messages.py)
    assert store.get(first.id) == first and store.history(first.chat_key, None, 10) == ([first], False)
    assert store.pending(BOB, MessageId(0), 10) == [first]
    assert writer.unfinished == [] and writer.finished == 1


async def test_the_writer_saves_nothing_of_a_commit_that_left_no_trace(
    store: MongoMessages, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = friend(1)
    Cut(monkeypatch, "message_ids", times=1)  # the claims' insert: nothing was written
    attempts = Attempts(store)
    writer = StoreWriter(store, attempts, finish_retry_s=0.01)  # type: ignore[arg-type]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            [error] = await failed_commit(writer, nursery, new(first, BOB))
            assert isinstance(error, StoreUnavailable)
            assert await attempts.receive.receive() == []
            nursery.cancel_scope.cancel()
    assert store.get(first.id) is None and store.pending(BOB, MessageId(0), 10) == []
    assert writer.unfinished == [] and writer.finished == 0


async def test_the_writer_keeps_the_newest_saves_of_failed_commits_up_to_its_limit(
    store: MongoMessages, monkeypatch: pytest.MonkeyPatch
) -> None:
    Cut(monkeypatch, "message_ids", times=math.inf)  # the store never answers
    writer = StoreWriter(store, BlockingRunner("messages", 1), finish_retry_s=60, unfinished_max=2)
    saves = [new(friend(n), BOB) for n in (1, 2, 3)]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await failed_commit(writer, nursery, *saves)
            assert writer.unfinished == saves[1:]
            nursery.cancel_scope.cancel()


def test_sent_after_reads_past_claims_without_a_document_to_a_full_page(store: MongoMessages, raw: Database) -> None:
    """A claim whose save was cut off before its document gives no message, and must not end a
    page early: the catch-up would take the sender's other messages for the last ones."""
    store.save_messages([new(friend(1), BOB)])
    for n in (2, 3):
        raw["message_ids"].insert_one(store._claim(new(friend(n), BOB)))  # cut off after the claim
    store.save_messages([new(friend(4), BOB), new(grouped(5)), new(friend(6), BOB)])
    assert [m.id for m in store.sent_after(ALICE, MessageId(0), 2)] == [friend(1).id, friend(4).id]
    assert [m.id for m in store.sent_after(ALICE, friend(4).id, 5)] == [grouped(5).id, friend(6).id]
