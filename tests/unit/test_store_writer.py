"""The store writer's group commit (node/store_writer.py) on a real SQLite store: saves and
confirms that wait together go in one `commit`, callbacks and receipts follow it, in order,
and a failed commit reaches every sender and every confirm."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from vim_cluster.adapters.sqlite_messages import SqliteMessages
from vim_cluster.errors import StoreUnavailable
from vim_cluster.model import MessageId
from vim_cluster.node.blocking import BlockingRunner
from vim_cluster.node.store_writer import StoreWriter
from vim_cluster.ports import NewMessage, Saved

from ..contract.test_message_store_contract import BOB, friend, new

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def store(tmp_path: Path) -> SqliteMessages:
    return SqliteMessages(str(tmp_path / "messages.db"))


async def test_saves_and_confirms_waiting_together_share_one_commit(store: SqliteMessages) -> None:
    store.save_messages([new(friend(1), BOB), new(friend(2), BOB)])
    writer = StoreWriter(store, BlockingRunner("messages", 1))
    done: list[tuple[int, bool]] = []
    confirmed: list[list[MessageId]] = []

    def on_done(saved: Saved | None, error: BaseException | None) -> None:
        assert saved is not None and error is None
        done.append((saved.message.id, saved.created))

    async def confirm(ids: list[MessageId]) -> None:
        confirmed.append([m.id for m in await writer.confirm(BOB, ids)])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            writer.submit(new(friend(3), BOB), on_done)
            nursery.start_soon(confirm, [friend(1).id, friend(9).id])
            nursery.start_soon(confirm, [friend(1).id, friend(2).id])
            await trio.testing.wait_all_tasks_blocked()
            writer.submit(new(friend(4), BOB), on_done)
            nursery.start_soon(writer.run)
            while len(confirmed) < 2:
                await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert writer.batches == 1 and (writer.saved, writer.confirmed) == (2, 2)
    assert done == [(friend(3).id, True), (friend(4).id, True)]
    assert sorted(sum(confirmed, [])) == [friend(1).id, friend(2).id]  # each id confirmed once
    assert [m.id for m in store.pending(BOB, MessageId(0), 10)] == [friend(3).id, friend(4).id]


async def test_a_failed_commit_reaches_every_sender_and_every_confirm(store: SqliteMessages) -> None:
    def down(saves: object, confirms: object) -> None:
        raise StoreUnavailable("sqlite: disk I/O error")

    store.commit = down  # type: ignore[method-assign, assignment]
    writer = StoreWriter(store, BlockingRunner("messages", 1))
    errors: list[BaseException | None] = []
    raised: list[BaseException] = []

    async def confirm() -> None:
        with pytest.raises(StoreUnavailable) as caught:
            await writer.confirm(BOB, [friend(1).id])
        raised.append(caught.value)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            writer.submit(NewMessage(friend(1), (BOB,)), lambda saved, error: errors.append(error))
            nursery.start_soon(confirm)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(writer.run)
            while not raised:
                await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert [type(e) for e in errors] == [StoreUnavailable] and writer.batches == 0
    assert "disk I/O error" in str(raised[0])
