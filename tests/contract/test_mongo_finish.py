"""A MongoDB save cut off part way (no transactions) is finished by the node that ran it, not
only by its sender's retry: `MongoMessages.finish_saves`, and the store writer that calls it
after a failed commit once the store answers (node/store_writer.py)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import ConnectionFailure

from vim_cluster.adapters import mongo_messages
from vim_cluster.adapters.mongo_base import message_doc, shard_of
from vim_cluster.adapters.mongo_messages import MongoMessages
from vim_cluster.errors import StoreUnavailable
from vim_cluster.model import MessageId
from vim_cluster.node.blocking import BlockingRunner
from vim_cluster.node.store_writer import StoreWriter
from vim_cluster.ports import NewMessage, Saved

from .test_message_store_contract import BOB, CAROL, friend, new

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def raw(mongo_url: str) -> Iterator[Database]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    with client:
        yield client.get_default_database()


@pytest.fixture
def store(mongo_url: str) -> Iterator[MongoMessages]:
    adapter = MongoMessages(mongo_url)
    yield adapter
    adapter.close()


def test_a_save_cut_off_before_its_document_is_finished_under_its_first_id(store: MongoMessages, raw: Database) -> None:
    first = friend(1)
    raw["message_ids"].insert_one(store._claim(new(first, BOB, CAROL)))  # the cut: steps 1-2 ran
    raw["pending_messages"].insert_many(store._rows([BOB], first.id, shard_of(first.chat_key, 16), message_doc(first)))
    assert store.pending(BOB, MessageId(0), 10) == [first] and store.get(first.id) is None  # half-visible
    later = friend(2, cid=first.cid, content="the node's own copy")  # the node kept the same NewMessage
    assert store.finish_saves([new(later, BOB, CAROL)]) == [first.id]
    assert store.get(first.id) == first and store.history(first.chat_key, None, 10) == ([first], False)
    assert store.pending(BOB, MessageId(0), 10) == [first]  # one row, not two
    assert store.pending(CAROL, MessageId(0), 10) == [first]  # the row the cut had not written
    assert store.finish_saves([new(first, BOB, CAROL)]) == []  # idempotent
    [repeat] = store.save_messages([new(first, BOB, CAROL)])  # the sender's retry, after
    assert (repeat.message, repeat.created) == (first, False)


def test_a_save_cut_off_after_its_claim_is_finished_and_one_that_left_no_trace_is_not(
    store: MongoMessages, raw: Database
) -> None:
    claimed, untouched = friend(1), friend(2)
    raw["message_ids"].insert_one(store._claim(new(claimed, BOB)))  # the cut: only step 1 ran
    assert store.finish_saves([new(claimed, BOB), new(untouched, BOB)]) == [claimed.id]
    assert store.pending(BOB, MessageId(0), 10) == [claimed] and store.get(claimed.id) == claimed
    assert store.get(untouched.id) is None  # its sender was told it failed: it stays unsaved
    assert raw["message_ids"].count_documents({"_id": untouched.id}) == 0


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
    """The writer's runner, reporting each finish_saves outcome (ids or error) to the test once
    the writer has taken it (the writer goes on to its next wait before the test runs)."""

    def __init__(self, store: MongoMessages) -> None:
        self.runner = BlockingRunner("messages", 1)
        self.finish = store.finish_saves
        self.send, self.receive = trio.open_memory_channel[list[MessageId] | BaseException](math.inf)

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
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            errors = await failed_commit(writer, nursery, new(first, BOB))
            assert [type(e) for e in errors] == [StoreUnavailable]
            assert isinstance(await attempts.receive.receive(), StoreUnavailable)  # the store still failing
            assert await attempts.receive.receive() == [first.id]
            nursery.cancel_scope.cancel()
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
