"""V-IM's raw message log (MongoDB's `message-log-{yyyyMMdd}`), written off the hot path.

`record` never blocks and never fails the send it logs: accepted messages go into a bounded
queue, and one task writes them in batches. The log is an audit trail, not the store: if the
queue is full or the server is down, log entries are dropped (and counted, and logged), never
messages. Stores without such a log (SQLite) get no task at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import structlog
import trio

from ..errors import StoreUnavailable
from ..model import Message
from ..protocol.frames import message_wire
from .blocking import BlockingRunner
from .store_writer import drain_batch

log = structlog.get_logger()
QUEUE = 10_000
BATCH = 500
Entry = tuple[str, int, int]  # (raw frame JSON, sender id, send time ms)


class FrameLog:
    def __init__(self, write: Callable[[Sequence[Entry]], None] | None, runner: BlockingRunner) -> None:
        self._write = write
        self._runner = runner
        self._send, self._receive = trio.open_memory_channel[Message](QUEUE)
        self.dropped = 0
        self.written = 0

    @property
    def enabled(self) -> bool:
        return self._write is not None

    def record(self, message: Message) -> None:
        if self._write is None:
            return
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("frame_log_queue_full", dropped=self.dropped)

    async def run(self) -> None:
        assert self._write is not None
        async for first in self._receive:
            batch = drain_batch(first, self._receive, BATCH)
            entries = [(json.dumps({"code": "message", "message": message_wire(m)}, ensure_ascii=False),
                        int(m.from_id), m.timestamp) for m in batch]
            try:
                await self._runner(self._write, entries)
                self.written += len(entries)
            except StoreUnavailable as exc:
                self.dropped += len(entries)
                log.warning("frame_log_write_failed", entries=len(entries), error=str(exc))
