"""Group commit for new messages: one transaction for every message waiting, not one each.

`save` returns only when its message is durable (or raises StoreUnavailable: then nothing of
its batch was stored). Messages are committed in the order `save` was called, so ids minted in
order by one connection are stored in that order.
"""

from __future__ import annotations

import math

import attrs
import structlog
import trio

from ..errors import StoreUnavailable
from ..ports import MessageStore, NewMessage, Saved
from .blocking import BlockingRunner

log = structlog.get_logger()
MAX_BATCH = 512


@attrs.define(eq=False)
class PendingSave:
    """A message handed to the writer; `await outcome()` once it is durable (or failed)."""

    item: NewMessage
    done: trio.Event = attrs.Factory(trio.Event)
    result: Saved | None = None
    error: BaseException | None = None

    async def outcome(self) -> Saved:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class StoreWriter:
    def __init__(self, store: MessageStore, runner: BlockingRunner) -> None:
        self._store = store
        self._runner = runner
        self._send, self._receive = trio.open_memory_channel[PendingSave](math.inf)
        self.batches = 0
        self.saved = 0

    def submit(self, item: NewMessage) -> PendingSave:
        """Queue a message without waiting; commits keep the order of `submit` calls."""
        pending = PendingSave(item)
        self._send.send_nowait(pending)
        return pending

    async def save(self, item: NewMessage) -> Saved:
        return await self.submit(item).outcome()

    async def run(self) -> None:
        async for first in self._receive:
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._commit(batch)

    async def _commit(self, batch: list[PendingSave]) -> None:
        try:
            results = await self._runner(self._store.save_messages, [p.item for p in batch])
        except StoreUnavailable as exc:
            log.warning("store_write_failed", batch=len(batch), error=str(exc))
            for p in batch:
                p.error = exc
        except Exception as exc:  # noqa: BLE001 - bulkhead: each waiting sender gets `internal`
            log.exception("store_write_crashed", batch=len(batch))
            for p in batch:
                p.error = exc
        else:
            self.batches += 1
            self.saved += len(batch)
            for p, result in zip(batch, results, strict=True):
                p.result = result
        for p in batch:
            p.done.set()
