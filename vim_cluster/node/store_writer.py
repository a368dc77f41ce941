"""Group commit: one store write for every message and every confirm waiting, not one each.

`submit` queues a message with a completion callback, called once the message is durable
(or with the error: StoreUnavailable means nothing of its batch was stored). `submit_confirm`
queues a `received` frame's ids with a callback, called once their delete is committed with
the messages it removed. Both go into the same batch: one `MessageStore.commit` per batch
(on the loop or in a thread, below).
Messages are committed, and their callbacks called, in the order of `submit`, so ids minted in
order by one connection are stored, acked and delivered in that order. A callback runs in the
writer task and must not block; one that raises is logged and does not stop the others.
Neither call waits for the commit, so a connection's frames that arrived meanwhile join the
same batch: a reader that awaited each confirm would give every commit one `received` frame
per connection, and a slow store (MongoDB) would fall further behind with each frame.

Where the commit runs: after one scheduler pass (the frames other tasks have already read join
the batch), on the event loop when the store can start it without waiting
(`MessageStore.commit_now`: SQLite when no other writer holds its lock), else in a worker
thread. A hop to the thread and back, and the two threads taking turns at the GIL, cost more
CPU than a small SQLite commit itself (issue 12). When another writer holds the lock (another
node's process on the same file, for its own commit), the loop tries again every
INLINE_RETRY_S, INLINE_TRIES times in all, before it hands the batch to the thread: with the
file shared by the nodes of one machine, a fifth of the senders' node's commits and half of
the recipients' node's had gone to the thread, and waiting on the loop cut the nodes' CPU per
message by 5-6 % (issue 12, session 12). A store whose `commits_inline` is False (MongoDB)
goes to the thread at once. While commits on the loop average more than `inline_max_s` (a
slow disk: the loop would stall that long each), they all go to the thread for
`inline_pause_s`, then the loop tries again.

Checkpoints (a store whose `checkpoints` is True: SQLite with `vim.store.sync: normal`):
`checkpoint_s` after a commit, the writer calls `MessageStore.checkpoint` for it and the
commits made meanwhile, in a worker thread of its own (not the store runner's: reads do not
queue behind it). So the WAL is copied into the database file while the loop goes on
committing, not inside a commit on the loop (adapters/sqlite_base.py). A failed checkpoint is
logged; the next commit brings the next try.

A failed commit on a store whose commits are not atomic (MongoDB: no transactions) may have
left some of its saves half done: in recipients' offline sets, and replayed to them, but not
in history. Its senders are told it failed and retry (same cid), which finishes them; a sender
who never retries would leave them so. So the writer keeps those saves (at most
`unfinished_max`, the oldest dropped first, logged) and finishes them itself once the store
answers (`MessageStore.finish_saves`: what a retry would finish, never a message that left no
trace), trying again after `finish_retry_s`, doubling up to FINISH_CAP_S. They are kept in
memory: a node that stops first leaves them to the senders' retries. What it finishes goes
to `on_finished` (the node delivers it to its chat's sessions, node/handlers/messages.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import structlog
import trio

from ..core.backoff import Backoff
from ..errors import StoreUnavailable
from ..model import Message
from ..ports import Confirm, MessageStore, NewMessage, Saved
from ..tunables import DEFAULTS
from .blocking import BlockingRunner

log = structlog.get_logger()


Done = Callable[[Saved | None, BaseException | None], None]
Confirmed = Callable[[list[Message], BaseException | None], None]  # the messages removed, or the error
Finished = Callable[[list[Message]], Awaitable[None]]  # messages finish_saves completed
INLINE_WEIGHT = 0.1  # of the latest commit in the moving average of commits on the loop
INLINE_TRIES = 8  # commits tried on the loop while another writer holds the lock, then the thread
INLINE_RETRY_S = 0.0005  # between those tries
FINISH_CAP_S = 30.0  # the longest wait between two tries to finish a failed commit's saves
T = TypeVar("T")


def drain_batch(first: T, receive: trio.MemoryReceiveChannel[T], limit: int) -> list[T]:
    """`first` and whatever else already waits in `receive`, up to `limit` items in all."""
    batch = [first]
    while len(batch) < limit:
        try:
            batch.append(receive.receive_nowait())
        except trio.WouldBlock:
            break
    return batch


@attrs.define(eq=False)
class PendingSave:
    item: NewMessage
    on_done: Done


@attrs.define(eq=False)
class PendingConfirm:
    item: Confirm
    on_done: Confirmed


Pending = PendingSave | PendingConfirm


class StoreWriter:
    def __init__(self, store: MessageStore, runner: BlockingRunner, batch: int = DEFAULTS.store_batch,
                 inline_max_s: float = DEFAULTS.store_inline_max_s,
                 inline_pause_s: float = DEFAULTS.store_inline_pause_s,
                 finish_retry_s: float = DEFAULTS.store_finish_retry_s,
                 unfinished_max: int = DEFAULTS.store_unfinished_max,
                 checkpoint_s: float = DEFAULTS.store_checkpoint_s) -> None:
        self._store = store
        self._batch = batch  # messages and confirms in one group commit
        self._runner = runner
        self._inline_max_s = inline_max_s
        self._inline_pause_s = inline_pause_s
        self._inline_avg_s = 0.0  # moving average of the commits that ran on the loop
        self._threaded_until = -math.inf  # trio time: until then, every commit goes to the thread
        self.inline = 0  # batches committed on the loop (the rest went to the thread)
        self.retried = 0  # waits on the loop for another writer's lock
        self._send, self._receive = trio.open_memory_channel[Pending](math.inf)
        self.batches = 0
        self.saved = 0
        self.confirmed = 0
        self.unfinished: list[NewMessage] = []  # saves of failed commits, to finish (oldest first)
        self._unfinished_max = unfinished_max
        self._finish_backoff = Backoff(base=finish_retry_s, cap=max(finish_retry_s, FINISH_CAP_S))
        self._to_finish = trio.Event()  # set while `unfinished` has saves
        self.finished = 0  # messages finish_saves completed
        self.on_finished: Finished | None = None  # set by the node: delivers what was finished
        self._checkpoint_s = checkpoint_s
        self._committed = trio.Event()  # set by each commit; the checkpoint task waits for it
        self._committing = False  # a batch is taken from the queue and not yet answered
        self._settled = trio.Event()  # set after each batch or finishing try (`drained` waits for it)
        self.checkpoints = 0  # checkpoints done (failed ones not counted)

    def submit(self, item: NewMessage, on_done: Done) -> None:
        """Queue a message without waiting; `on_done(saved, error)` follows its commit."""
        self._send.send_nowait(PendingSave(item, on_done))

    def submit_confirm(self, item: Confirm, on_done: Confirmed) -> None:
        """Queue a confirm without waiting; `on_done(removed, error)` follows its commit, with
        the messages that were in the offline set."""
        self._send.send_nowait(PendingConfirm(item, on_done))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            if not self._store.commits_atomic:
                nursery.start_soon(self._finish_unfinished)
            if self._store.checkpoints:
                nursery.start_soon(self._checkpoint_after_commits)
            async for first in self._receive:
                self._committing = True
                # One scheduler pass first: the frames other tasks have already read join this
                # batch (a commit on the loop would otherwise take one message at a time).
                await trio.lowlevel.cancel_shielded_checkpoint()
                await self._commit(drain_batch(first, self._receive, self._batch))
                self._committing = False
                self._settled.set()
            nursery.cancel_scope.cancel()

    def idle(self) -> bool:
        """Nothing queued, committing, or left to finish: every save and confirm submitted so far
        is answered, and what it delivers has been handed to the cluster link."""
        return not (self._committing or self._receive.statistics().current_buffer_used or self.unfinished)

    async def drained(self) -> None:
        """Returns once `idle` (a stopping node whose sessions are gone: nothing new comes)."""
        while not self.idle():
            if self._settled.is_set():
                self._settled = trio.Event()
            await self._settled.wait()

    async def _commit(self, batch: list[Pending]) -> None:
        saves = [p for p in batch if isinstance(p, PendingSave)]
        confirms = [p for p in batch if isinstance(p, PendingConfirm)]
        results: list[Saved | None] = [None] * len(saves)
        removed: list[list[Message]] = [[] for _ in confirms]
        error: BaseException | None = None
        try:
            stored, removed = await self._write([p.item for p in saves], [p.item for p in confirms])
            results = list(stored)
        except StoreUnavailable as exc:
            log.warning("store_write_failed", saves=len(saves), confirms=len(confirms), error=str(exc))
            error = exc
            if not self._store.commits_atomic:
                self._keep_unfinished([p.item for p in saves])
        except Exception as exc:  # noqa: BLE001 - bulkhead: each waiting sender gets `internal`
            log.exception("store_write_crashed", saves=len(saves), confirms=len(confirms))
            error = exc
        else:
            self._committed.set()
            self.batches += 1
            self.saved += len(saves)
            self.confirmed += len(confirms)
        self._callbacks(saves, results, confirms, removed, error)

    async def _checkpoint_after_commits(self) -> None:
        """A checkpoint `checkpoint_s` after a commit, for it and what commits meanwhile (see
        the module docstring)."""
        runner = BlockingRunner("checkpoint", 1)
        while True:
            await self._committed.wait()
            await trio.sleep(self._checkpoint_s)
            self._committed = trio.Event()
            try:
                await runner(self._store.checkpoint)
            except StoreUnavailable as exc:
                log.warning("store_checkpoint_failed", error=str(exc))
            except Exception:  # noqa: BLE001 - a bug: logged; commits go on, the backstop copies
                log.exception("store_checkpoint_crashed")
            else:
                self.checkpoints += 1

    def _keep_unfinished(self, saves: list[NewMessage]) -> None:
        if not saves:
            return
        self.unfinished.extend(saves)
        over = len(self.unfinished) - self._unfinished_max
        if over > 0:
            dropped = self.unfinished[:over]
            del self.unfinished[:over]
            log.warning("store_unfinished_dropped", count=over, first_id=dropped[0].message.id,
                        last_id=dropped[-1].message.id, kept=len(self.unfinished))
        self._to_finish.set()

    async def _finish_unfinished(self) -> None:
        """Finishes the saves failed commits left (see the module docstring), oldest first, a
        store batch at a time; waits longer after each try the store refuses."""
        try:
            while True:
                await self._to_finish.wait()
                batch = self.unfinished[: self._batch]
                try:
                    finished = await self._runner(self._store.finish_saves, batch)
                except StoreUnavailable as exc:
                    delay = self._finish_backoff.next_delay()
                    log.warning("store_finish_failed", saves=len(batch), retry_in_s=round(delay, 2), error=str(exc))
                    await trio.sleep(delay)
                    continue
                except Exception:  # noqa: BLE001 - a bug, or data no retry mends: left to their senders
                    log.exception("store_finish_crashed", saves=len(batch), first_id=batch[0].message.id)
                else:
                    self.finished += len(finished)
                    if finished:
                        log.info("store_saves_finished", finished=len(finished), of=len(batch),
                                 ids=[m.id for m in finished[:20]])
                        await self._deliver_finished(finished)
                self._finish_backoff.reset()
                done = {id(item) for item in batch}  # saves dropped meanwhile (over the limit) shifted the list
                self.unfinished = [item for item in self.unfinished if id(item) not in done]
                if not self.unfinished:
                    self._to_finish = trio.Event()
                self._settled.set()
        finally:
            if self.unfinished:
                log.warning("store_unfinished_left", count=len(self.unfinished),
                            first_id=self.unfinished[0].message.id)

    async def _deliver_finished(self, finished: list[Message]) -> None:
        if self.on_finished is None:
            return
        try:
            await self.on_finished(finished)
        except Exception:  # noqa: BLE001 - stored already: replay delivers them; the writer goes on
            log.exception("finished_delivery_failed", ids=[m.id for m in finished[:20]])

    async def _write(self, saves: list[NewMessage], confirms: list[Confirm]) -> tuple[list[Saved], list[list[Message]]]:
        if self._store.commits_inline and trio.current_time() >= self._threaded_until:
            for attempt in range(INLINE_TRIES):
                started = time.perf_counter()
                done = self._store.commit_now(saves, confirms)
                if done is not None:
                    self.inline += 1
                    self._timed(time.perf_counter() - started)
                    return done
                if attempt + 1 < INLINE_TRIES:
                    # Another writer holds the lock for its own commit (a millisecond or two):
                    # waiting for it here costs less than a thread hop and the GIL hand-offs
                    # of a commit in a thread. Shielded, as the thread's commit is.
                    self.retried += 1
                    with trio.CancelScope(shield=True):
                        await trio.sleep(INLINE_RETRY_S)
        return await self._runner(self._store.commit, saves, confirms)

    def _timed(self, took_s: float) -> None:
        self._inline_avg_s += (took_s - self._inline_avg_s) * INLINE_WEIGHT
        if self._inline_avg_s > self._inline_max_s:
            log.warning("store_commits_threaded", average_ms=round(self._inline_avg_s * 1000, 2),
                        limit_ms=round(self._inline_max_s * 1000, 2), for_s=self._inline_pause_s)
            self._threaded_until = trio.current_time() + self._inline_pause_s
            self._inline_avg_s = 0.0

    @staticmethod
    def _callbacks(saves: list[PendingSave], results: list[Saved | None], confirms: list[PendingConfirm],
                   removed: list[list[Message]], error: BaseException | None) -> None:
        for pending, result in zip(saves, results, strict=True):
            try:
                pending.on_done(result, error)
            except Exception:  # noqa: BLE001 - one sender's callback must not stop the others
                log.exception("save_callback_crashed", message_id=pending.item.message.id)
        for waiting, messages in zip(confirms, removed, strict=True):
            try:
                waiting.on_done(messages, error)
            except Exception:  # noqa: BLE001 - one confirm's callback must not stop the others
                log.exception("confirm_callback_crashed", user_id=waiting.item.user_id)
