"""Group commit: one store write for every message and every confirm waiting, not one each.

`submit` queues a message with a completion callback, called once the message is durable
(or with the error: StoreUnavailable means nothing of its batch was stored). `confirm` queues
a `received` frame's ids and returns, once their delete is committed, the messages it removed.
Both go into the same batch: one worker-thread hop and one `MessageStore.commit` per batch.
Messages are committed, and their callbacks called, in the order of `submit`, so ids minted in
order by one connection are stored, acked and delivered in that order. A callback runs in the
writer task and must not block; one that raises is logged and does not stop the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import attrs
import structlog
import trio

from ..errors import StoreUnavailable
from ..model import Message, MessageId, UserId
from ..ports import Confirm, MessageStore, NewMessage, Saved
from ..tunables import DEFAULTS
from .blocking import BlockingRunner

log = structlog.get_logger()


Done = Callable[[Saved | None, BaseException | None], None]
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
    done: trio.Event = attrs.field(factory=trio.Event)
    result: list[Message] = attrs.field(factory=list)
    error: BaseException | None = None


Pending = PendingSave | PendingConfirm


class StoreWriter:
    def __init__(self, store: MessageStore, runner: BlockingRunner, batch: int = DEFAULTS.store_batch) -> None:
        self._store = store
        self._batch = batch  # messages and confirms in one group commit
        self._runner = runner
        self._send, self._receive = trio.open_memory_channel[Pending](math.inf)
        self.batches = 0
        self.saved = 0
        self.confirmed = 0

    def submit(self, item: NewMessage, on_done: Done) -> None:
        """Queue a message without waiting; `on_done(saved, error)` follows its commit."""
        self._send.send_nowait(PendingSave(item, on_done))

    async def confirm(self, user_id: UserId, ids: Sequence[MessageId]) -> list[Message]:
        """Drops `ids` from the user's offline set in the next group commit; returns the
        messages that were in it once the delete is committed. Raises what the commit raised."""
        pending = PendingConfirm(Confirm(user_id, tuple(ids)))
        self._send.send_nowait(pending)
        await pending.done.wait()
        if isinstance(pending.error, StoreUnavailable):
            raise StoreUnavailable(str(pending.error))  # a fresh one per waiter (tracebacks)
        if pending.error is not None:  # the writer logged its traceback
            raise RuntimeError(f"the store commit failed: {pending.error!r}")
        return pending.result

    async def run(self) -> None:
        async for first in self._receive:
            await self._commit(drain_batch(first, self._receive, self._batch))

    async def _commit(self, batch: list[Pending]) -> None:
        saves = [p for p in batch if isinstance(p, PendingSave)]
        confirms = [p for p in batch if isinstance(p, PendingConfirm)]
        results: list[Saved | None] = [None] * len(saves)
        removed: list[list[Message]] = [[] for _ in confirms]
        error: BaseException | None = None
        try:
            stored, removed = await self._runner(
                self._store.commit, [p.item for p in saves], [p.item for p in confirms]
            )
            results = list(stored)
        except StoreUnavailable as exc:
            log.warning("store_write_failed", saves=len(saves), confirms=len(confirms), error=str(exc))
            error = exc
        except Exception as exc:  # noqa: BLE001 - bulkhead: each waiting sender gets `internal`
            log.exception("store_write_crashed", saves=len(saves), confirms=len(confirms))
            error = exc
        else:
            self.batches += 1
            self.saved += len(saves)
            self.confirmed += len(confirms)
        for pending, result in zip(saves, results, strict=True):
            try:
                pending.on_done(result, error)
            except Exception:  # noqa: BLE001 - one sender's callback must not stop the others
                log.exception("save_callback_crashed", message_id=pending.item.message.id)
        for waiting, messages in zip(confirms, removed, strict=True):
            waiting.result, waiting.error = messages, error
            waiting.done.set()
