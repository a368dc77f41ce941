"""Group commit for new messages: one transaction for every message waiting, not one each.

`submit` queues a message with a completion callback, called once the message is durable
(or with the error: StoreUnavailable means nothing of its batch was stored). Messages are
committed, and their callbacks called, in the order of `submit`, so ids minted in order by one
connection are stored, acked and delivered in that order. A callback runs in the writer task
and must not block; one that raises is logged and does not stop the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import attrs
import structlog
import trio

from ..errors import StoreUnavailable
from ..ports import MessageStore, NewMessage, Saved
from .blocking import BlockingRunner

log = structlog.get_logger()
STORE_BATCH = 512


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


class StoreWriter:
    def __init__(self, store: MessageStore, runner: BlockingRunner) -> None:
        self._store = store
        self._runner = runner
        self._send, self._receive = trio.open_memory_channel[PendingSave](math.inf)
        self.batches = 0
        self.saved = 0

    def submit(self, item: NewMessage, on_done: Done) -> None:
        """Queue a message without waiting; `on_done(saved, error)` follows its commit."""
        self._send.send_nowait(PendingSave(item, on_done))

    async def run(self) -> None:
        async for first in self._receive:
            await self._commit(drain_batch(first, self._receive, STORE_BATCH))

    async def _commit(self, batch: list[PendingSave]) -> None:
        results: list[Saved | None] = [None] * len(batch)
        error: BaseException | None = None
        try:
            results = list(await self._runner(self._store.save_messages, [p.item for p in batch]))
        except StoreUnavailable as exc:
            log.warning("store_write_failed", batch=len(batch), error=str(exc))
            error = exc
        except Exception as exc:  # noqa: BLE001 - bulkhead: each waiting sender gets `internal`
            log.exception("store_write_crashed", batch=len(batch))
            error = exc
        else:
            self.batches += 1
            self.saved += len(batch)
        for pending, result in zip(batch, results, strict=True):
            try:
                pending.on_done(result, error)
            except Exception:  # noqa: BLE001 - one sender's callback must not stop the others
                log.exception("save_callback_crashed", message_id=pending.item.message.id)
