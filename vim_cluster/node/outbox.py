"""One connection's outgoing frames, sent in order by a writer task that exists only while
there is something to send.

An idle connection (most of 10,000) holds a list and this object, not a channel and a task:
that is what keeps it small. The writer starts with the first frame, sends everything queued,
waits LINGER_S for more and ends.

Three ways in:
- push(frame): deliveries from other sessions; never blocks; False when `limit` frames, or
  frames of `byte_limit` bytes, are waiting (the caller closes the slow consumer; replay
  brings the frames back). The bytes count until a frame is written, so a client that stops
  reading holds at most `byte_limit` bytes of the node's memory (plus one frame).
- append(frame): the connection's own replies and acks; no limit here, the reader bounds them
  by waiting for `room()` before it takes the next request.
- close(Close): the last item; its frame is sent, then the WebSocket is closed, then `scope`
  is cancelled (the connection ends). Anything queued after it is dropped.
- abort(Close): drops what waits and closes right after the frame being sent (a kick of a
  full outbox, a slow consumer): a WebSocket frame is never cut in two by a close frame.

If the writer is cancelled in the middle of a frame, `broken` says so: the stream can then
only be dropped (`drop`), since anything written after half a frame corrupts it.
"""

from __future__ import annotations

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ..errors import CloseCode
from ..protocol.codec import OutFrame

LINGER_S = 1.0  # an idle writer waits this long for the next frame before it ends
CLOSE_GRACE = 5.0


@attrs.frozen
class Close:
    """Queue item: send `frame` (if any), then close the WebSocket with `code`."""

    code: CloseCode
    reason: str
    frame: OutFrame | None = None


class Outbox:
    __slots__ = ("_ws", "_nursery", "_scope", "_items", "_writing", "_wake", "_room", "_closing", "_batch",
                 "broken", "limit", "byte_limit", "binary", "_bytes")

    def __init__(self, ws: WebSocketConnection, limit: int, byte_limit: int = 1 << 62) -> None:
        self._ws = ws
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._items: list[OutFrame | Close] = []
        self._writing = False
        self._wake: trio.Event | None = None
        self._room: trio.Event | None = None
        self._closing = False
        self._batch = 0  # which batch the writer sends; abort() starts a new one
        self.broken = False  # cancelled in the middle of a frame
        self.limit = limit
        self.byte_limit = byte_limit
        self._bytes = 0  # encoded size of the frames queued or being written
        self.binary = False  # the client spoke msgpack: frames go out binary

    def attach(self, nursery: trio.Nursery, scope: trio.CancelScope) -> None:
        """Writers start in `nursery`; `scope` is cancelled when the WebSocket is closed."""
        self._nursery, self._scope = nursery, scope
        if self._items:
            self._start()

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: OutFrame) -> bool:
        if self._closing:
            return True  # closing: dropped (the client gets it again by replay)
        if len(self._items) >= self.limit or self._bytes + self._size(item) > self.byte_limit:
            return False
        self._add(item)
        return True

    def _size(self, item: OutFrame) -> int:
        return len(item.encoded(self.binary))

    def append(self, item: OutFrame) -> None:
        if not self._closing:
            self._add(item)

    def close(self, item: Close) -> bool:
        """Queue the close; False if the outbox is full (then close without a frame)."""
        if self._closing:
            return True
        if len(self._items) >= self.limit:
            return False
        self._add(item)
        self._closing = True
        return True

    def abort(self, item: Close) -> None:
        """Drop what waits; close after the frame being sent."""
        self._items = [item]
        self._bytes = 0
        self._closing = True
        self._batch += 1
        self._poke()

    async def room(self) -> None:
        """Returns once fewer than `limit` frames wait to be sent."""
        while len(self._items) >= self.limit and not self._closing:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    def _add(self, item: OutFrame | Close) -> None:
        if isinstance(item, OutFrame):
            self._bytes += self._size(item)
        self._items.append(item)
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()
        elif not self._writing and self._nursery is not None:
            self._start()

    def _start(self) -> None:
        assert self._nursery is not None
        self._writing = True
        self._nursery.start_soon(self._write)

    async def _write(self) -> None:
        try:
            while self._items:
                batch, self._items = self._items, []
                self._batch += 1
                number = self._batch
                if self._room is not None:
                    self._room.set()
                    self._room = None
                for item in batch:
                    if number != self._batch:
                        break  # aborted: self._items holds the close
                    if isinstance(item, Close):
                        await self._send_close(item)
                        return
                    self.broken = True
                    data = item.encoded(self.binary)
                    await self._ws.send_message(data)
                    self.broken = False
                    self._bytes = max(0, self._bytes - len(data))
                if not self._items:
                    self._bytes = 0  # all written (forgets any drift of a switch to binary)
                    self._wake = trio.Event()
                    with trio.move_on_after(LINGER_S):
                        await self._wake.wait()
                    self._wake = None
        except ConnectionClosed:
            self._end()  # the peer went away; the reader sees it too
        finally:
            self._writing = False

    async def _send_close(self, item: Close) -> None:
        try:
            if item.frame is not None:
                self.broken = True
                await self._ws.send_message(item.frame.encoded(self.binary))
                self.broken = False
            with trio.move_on_after(CLOSE_GRACE):
                await self._ws.aclose(int(item.code), item.reason)
        finally:
            self._end()

    async def drop(self) -> None:
        """Closes the TCP connection without a close frame (after `broken`)."""
        with trio.CancelScope() as scope:
            scope.cancel()  # trio-websocket closes the stream when its close is cancelled
            await self._ws.aclose()

    def _end(self) -> None:
        self._closing = True
        self._items = []
        self._bytes = 0
        if self._room is not None:
            self._room.set()
        if self._scope is not None:
            self._scope.cancel()
