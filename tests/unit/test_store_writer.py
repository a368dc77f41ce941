"""The store writer's group commit (node/store_writer.py) on a real SQLite store: saves and
confirms that wait together go in one `commit`, callbacks and receipts follow it, in order,
and a failed commit reaches every sender and every confirm. A commit runs on the event loop
unless commits there have been slow, or another writer holds the lock through all the tries
on the loop; then in the thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from vim_cluster.adapters.sqlite_base import WriterLock
from vim_cluster.adapters.sqlite_messages import SqliteMessages
from vim_cluster.errors import StoreUnavailable
from vim_cluster.model import Message, MessageId
from vim_cluster.node import store_writer
from vim_cluster.node.blocking import BlockingRunner
from vim_cluster.node.store_writer import StoreWriter
from vim_cluster.ports import Confirm, NewMessage, Saved

from ..contract.test_message_store_contract import BOB, friend, new

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def store(tmp_path: Path) -> SqliteMessages:
    return SqliteMessages(str(tmp_path / "messages.db"))


class Commits:
    """A save's callback that records the committed message id (0: failed) and sets `committed`."""

    def __init__(self) -> None:
        self.done: list[int] = []
        self.committed = trio.Event()

    def __call__(self, saved: Saved | None, error: BaseException | None) -> None:
        self.done.append(saved.message.id if saved else 0)
        self.committed.set()


@pytest.fixture
def other_node(tmp_path: Path) -> Iterator[WriterLock]:
    """The write lock of the file, as another node's process sharing it takes it."""
    lock = WriterLock(str(tmp_path / "messages.db-writer"))
    try:
        yield lock
    finally:
        lock.close()


async def test_saves_and_confirms_waiting_together_share_one_commit(store: SqliteMessages) -> None:
    store.save_messages([new(friend(1), BOB), new(friend(2), BOB)])
    writer = StoreWriter(store, BlockingRunner("messages", 1))
    done: list[tuple[int, bool]] = []
    confirmed: list[list[MessageId]] = []

    def on_done(saved: Saved | None, error: BaseException | None) -> None:
        assert saved is not None and error is None
        done.append((saved.message.id, saved.created))

    def on_confirmed(removed: list[Message], error: BaseException | None) -> None:
        assert error is None
        confirmed.append([m.id for m in removed])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            writer.submit(new(friend(3), BOB), on_done)
            writer.submit_confirm(Confirm(BOB, (friend(1).id, friend(9).id)), on_confirmed)
            writer.submit_confirm(Confirm(BOB, (friend(1).id, friend(2).id)), on_confirmed)
            writer.submit(new(friend(4), BOB), on_done)
            nursery.start_soon(writer.run)
            while len(confirmed) < 2:
                await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert writer.batches == 1 and (writer.saved, writer.confirmed) == (2, 2)
    assert done == [(friend(3).id, True), (friend(4).id, True)]
    assert sorted(sum(confirmed, [])) == [friend(1).id, friend(2).id]  # each id confirmed once
    assert [m.id for m in store.pending(BOB, MessageId(0), 10)] == [friend(3).id, friend(4).id]


@pytest.mark.parametrize("where", ["loop", "thread"])
async def test_a_failed_commit_reaches_every_sender_and_every_confirm(store: SqliteMessages, where: str) -> None:
    def down(saves: object, confirms: object) -> None:
        raise StoreUnavailable("sqlite: disk I/O error")

    store.commit = down  # type: ignore[method-assign, assignment]
    store.commit_now = down if where == "loop" else lambda saves, confirms: None  # type: ignore[method-assign, assignment]
    writer = StoreWriter(store, BlockingRunner("messages", 1))
    errors: list[BaseException | None] = []
    raised: list[tuple[list[Message], BaseException | None]] = []

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            writer.submit(NewMessage(friend(1), (BOB,)), lambda saved, error: errors.append(error))
            writer.submit_confirm(Confirm(BOB, (friend(1).id,)), lambda removed, error: raised.append((removed, error)))
            nursery.start_soon(writer.run)
            while not raised:
                await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert [type(e) for e in errors] == [StoreUnavailable] and writer.batches == 0
    assert writer.unfinished == []  # a failed SQLite commit rolled back: nothing to finish
    [(removed, error)] = raised
    assert removed == [] and isinstance(error, StoreUnavailable) and "disk I/O error" in str(error)


async def saved_by(writer: StoreWriter, *messages: NewMessage) -> list[int]:
    """Submits `messages` and runs the writer until every callback came; the saved ids."""
    done: list[int] = []

    def on_done(saved: Saved | None, error: BaseException | None) -> None:
        assert saved is not None and error is None, error
        done.append(saved.message.id)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            for message in messages:
                writer.submit(message, on_done)
            while len(done) < len(messages):
                await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    return done


async def test_a_commit_runs_on_the_event_loop_when_no_other_writer_holds_the_lock(store: SqliteMessages) -> None:
    runner = BlockingRunner("messages", 1)
    writer = StoreWriter(store, runner)
    assert await saved_by(writer, new(friend(1), BOB)) == [friend(1).id]
    assert (writer.batches, writer.inline, runner.threads()) == (1, 1, 0)
    assert [m.id for m in store.pending(BOB, MessageId(0), 10)] == [friend(1).id]


async def test_while_another_process_holds_the_write_lock_the_commit_waits_in_the_thread(
    store: SqliteMessages, other_node: WriterLock
) -> None:
    runner = BlockingRunner("messages", 1)
    writer = StoreWriter(store, runner)
    commits = Commits()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with other_node.held(None):
                nursery.start_soon(writer.run)
                writer.submit(new(friend(1), BOB), commits)
                while runner.threads() == 0:  # the loop did not wait: it handed the commit over
                    await trio.testing.wait_all_tasks_blocked()
                assert commits.done == [] and writer.inline == 0
            await commits.committed.wait()  # released: the thread's commit goes through
            nursery.cancel_scope.cancel()
    assert commits.done == [friend(1).id] and writer.batches == 1 and writer.inline == 0


async def test_a_lock_released_within_the_retries_lets_the_commit_run_on_the_loop(
    store: SqliteMessages, other_node: WriterLock, autojump_clock: object
) -> None:
    # Another node's process commits (holds the lock) for a moment: the writer waits on the
    # loop, INLINE_RETRY_S at a time, and commits there once it is free, with no thread hop.
    runner = BlockingRunner("messages", 1)
    writer = StoreWriter(store, runner)
    commits = Commits()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            with other_node.held(None):
                writer.submit(new(friend(1), BOB), commits)
                await trio.testing.wait_all_tasks_blocked()
                assert (writer.retried, commits.done) == (1, [])  # waiting on the loop
                await trio.sleep(store_writer.INLINE_RETRY_S)  # virtual time (autojump): one more retry
                await trio.testing.wait_all_tasks_blocked()
                assert (writer.retried, commits.done) == (2, [])
            await commits.committed.wait()  # released: the next retry commits on the loop
            nursery.cancel_scope.cancel()
    assert commits.done == [friend(1).id]
    assert (writer.batches, writer.inline, runner.threads()) == (1, 1, 0)


def test_a_commit_that_must_not_wait_does_nothing_while_a_writer_without_the_lock_holds_sqlite(
    store: SqliteMessages, tmp_path: Path
) -> None:
    import sqlite3

    shell = sqlite3.connect(str(tmp_path / "messages.db"), isolation_level=None)  # as the sqlite3 shell
    try:
        shell.execute("BEGIN IMMEDIATE")
        assert store.commit_now([new(friend(1), BOB)], []) is None
        shell.execute("ROLLBACK")
    finally:
        shell.close()
    assert store.pending(BOB, MessageId(0), 10) == []
    with store._db.reading() as conn:  # the wait=True writers keep their busy timeout
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    saved, _ = store.commit_now([new(friend(1), BOB)], []) or ([], [])
    assert [s.message.id for s in saved] == [friend(1).id]


async def test_slow_commits_on_the_loop_move_to_the_thread_for_a_while(store: SqliteMessages, mock_clock) -> None:
    runner = BlockingRunner("messages", 1)
    writer = StoreWriter(store, runner, inline_max_s=0.0, inline_pause_s=30.0)  # every commit is "slow"
    await saved_by(writer, new(friend(1), BOB))
    assert (writer.inline, runner.threads()) == (1, 0)
    await saved_by(writer, new(friend(2), BOB))  # within the pause: the thread
    assert (writer.batches, writer.inline, runner.threads()) == (2, 1, 1)
    mock_clock.jump(30)
    await saved_by(writer, new(friend(3), BOB))  # the pause is over: the loop again
    assert (writer.batches, writer.inline) == (3, 2)
