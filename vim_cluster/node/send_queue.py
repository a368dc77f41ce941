"""A client connection's SendQueue: its outgoing frames, sent in order by a writer task that
exists only while there is something to send, one `send_all` per batch.

An idle connection (most of 10,000) holds a list and this object, not a channel and a task:
that is what keeps it small. The writer starts with the first frame, frames everything queued
into one buffer (up to `send_bytes`), writes it with one `send_all`, waits `linger_s` for more and
ends. One write per batch, not per frame, is what a busy connection saves (issue 12: a
send_all per frame costs ~42 µs of CPU, one per batch of 16 ~7 µs a frame).

Ways in:
- push(frame): deliveries from other sessions; never blocks; False when `limit` frames, or
  frames of `byte_limit` bytes, are waiting (the session keeps the frame in its backlog, or
  closes a slow consumer: node/local_sessions.py; replay brings the frames back). The bytes
  count until a frame is written, so a client that stops reading holds at most `byte_limit`
  bytes of the node's memory in its queue (plus one batch; its backlog as much again). A caller
  that can wait (a catch-up, the release of packets held during it) first waits until the
  queue `takes` what it pushes (`room(frames, size)`, which bounds nothing itself): a burst
  of more than `limit` frames then does not close a client that reads.
- append(frame): the connection's own replies and acks; no limit here, the reader bounds them
  by waiting for `room()` before it takes the next request.
- control(data): a pre-framed control frame (a pong); a newer one replaces one still waiting.
- close(Close): the last item; its frame and the close frame are sent, then `scope` is
  cancelled (the connection ends). Anything queued after it is dropped, and what waits for
  room (`room`, `freed`: an offline replay, a backlog's hand-over, a reply) goes on at once.
- abort(Close): drops what waits and closes right after the batch being sent (a kick of a
  full queue, a slow consumer): a WebSocket frame is never cut in two by a close frame.

If the writer is cancelled in the middle of a write, the socket is `broken`: the stream can
then only be dropped, since anything written after half a frame corrupts it.

Write-through (`Flusher`, one per node's client listener): a queue with no writer task does
not start one for each frame. It asks the Flusher, which once per scheduler pass frames every
such queue's waiting frames into one buffer and hands it to the socket without waiting
(`try_send`: a plain TCP socket takes it at once unless its buffer is full). Only what the
socket did not take (a slow reader, a TLS stream) starts the queue's writer task. A frame
thus costs one `write` syscall shared with every frame queued beside it, and no task switch:
what a group message to hundreds of members saves per copy (issue 12).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import attrs
import structlog
import trio

from ..errors import CloseCode
from ..protocol.codec import OutFrame
from ..tunables import DEFAULTS
from .ws_server import Flusher, frame

log = structlog.get_logger()


def framed(item: OutFrame, binary: bool) -> bytes:
    """`item` as one WebSocket frame for a text (JSON) or `binary` (MessagePack) connection,
    made once per frame and mode and shared by every connection it goes to (a group copy
    costs no encode, header or join of its own)."""
    if binary:
        data = item.framed_binary
        if data is None:
            data = item.framed_binary = frame(item.payload(True), not item.text_frame(True))
        return data
    data = item.framed_text
    if data is None:
        data = item.framed_text = frame(item.payload(False), False)
    return data


class Socket(Protocol):
    """What the queue needs of a WebSocket (node/ws_server.ServerSocket)."""

    async def send_all(self, data: bytes) -> None: ...

    def close_frame(self, code: int, reason: str) -> bytes: ...


class DirectSocket(Socket, Protocol):
    """A socket that can also write without waiting (what the Flusher needs)."""

    def try_send(self, data: bytes) -> int:
        """Writes what the socket takes now; returns how many bytes (0: none, or no direct way)."""
        ...


@attrs.frozen
class Rest:
    """Queue item: the unwritten end of a buffer the Flusher began writing (raw bytes that may
    start in the middle of a frame: nothing may go before them or replace them)."""

    data: bytes


@attrs.frozen
class Close:
    """Queue item: send `frame` (if any), then close the WebSocket with `code`."""

    code: CloseCode
    reason: str
    frame: OutFrame | None = None


Item = OutFrame | Close | bytes | Rest  # bytes: a pre-framed control frame


class SendQueue:
    __slots__ = ("_ws", "_nursery", "_scope", "_items", "_writing", "_wake", "_room", "_closing", "_batch",
                 "limit", "byte_limit", "binary", "_bytes", "linger_s", "send_bytes", "_flusher", "_flushing")

    def __init__(self, ws: Socket, limit: int, byte_limit: int = 1 << 62, flusher: Flusher | None = None, *,
                 linger_s: float = DEFAULTS.client_linger_s, send_bytes: int = DEFAULTS.client_send_bytes) -> None:
        self.linger_s = linger_s  # an idle writer waits this long for the next frame before it ends
        self.send_bytes = send_bytes  # one write carries at most about this much (a batch may take several)
        self._ws = ws
        self._flusher = flusher  # None: every batch is written by the queue's writer task
        self._flushing = False  # waiting for the Flusher
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._items: list[Item] = []
        self._writing = False
        self._wake: trio.Event | None = None
        self._room: trio.Event | None = None
        self._closing = False
        self._batch = 0  # which batch the writer sends; abort() starts a new one
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
        # Runs once per copy of a group message: _add and the usual case of _poke inlined.
        if self._closing:
            return True  # closing: dropped (the client gets it again by replay)
        size = len(item.payload(self.binary))
        items = self._items
        if len(items) >= self.limit or self._bytes + size > self.byte_limit:
            return False
        self._bytes += size
        items.append(item)
        if not (self._flushing or self._writing):  # else it goes with what already waits
            self._poke()
        elif self._wake is not None:
            self._wake.set()
        return True

    def _size(self, item: OutFrame) -> int:
        return len(item.payload(self.binary))

    def append(self, item: OutFrame) -> None:
        if not self._closing:
            self._add(item)

    def control_waiting(self) -> bool:
        """Whether a control frame (a pong) still waits to be sent: the client is not reading."""
        return bool(self._items) and isinstance(self._items[-1], bytes)

    def control(self, data: bytes) -> None:
        """Queue a pre-framed control frame; it replaces one of its kind still waiting."""
        if self._closing:
            return
        if self.control_waiting():
            self._items[-1] = data
        else:
            self._add(data)

    def close(self, item: Close) -> bool:
        """Queue the close; False if the outbox is full (then close without a frame)."""
        if self._closing:
            return True
        if len(self._items) >= self.limit:
            return False
        self._add(item)
        self._closing = True
        self._freed()  # a closing queue takes (drops) anything: what waits for room goes on
        return True

    def abort(self, item: Close) -> None:
        """Drop what waits; close after the frame being sent."""
        rest = self._items[0] if self._items and isinstance(self._items[0], Rest) else None
        self._items = [rest, item] if rest is not None else [item]
        self._bytes = 0
        self._closing = True
        self._batch += 1
        self._freed()  # nothing more is taken: what waits for room goes on
        self._poke()

    def takes(self, frames: int = 1, size: int = 0, spare: bool = False) -> bool:
        """Whether `push` takes `frames` more frames of `size` bytes in all now (a closing
        queue takes anything: it drops it). More than `limit` frames count as `limit`, and
        more than `byte_limit` bytes as what an empty queue takes: those never fit whole.
        `spare`: and half the queue (frames and bytes) still free after them, what a caller
        that can wait asks (a catch-up, the release of held packets): it never takes the last
        places, which the connection's reader waits for (`room()`) before it reads on (the
        client's next request, its close): a catch-up that filled every place as soon as it
        was free kept a client's requests and close unanswered until it ended."""
        if self._closing:
            return True
        if spare:
            frames, size = frames + self.limit // 2, (size + self.byte_limit // 2 if size else 0)
        return len(self._items) <= self.limit - min(frames, self.limit) and \
            (not size or not self._bytes or self._bytes + size <= self.byte_limit)

    @property
    def closing(self) -> bool:
        """Its close is queued (or it ended): it takes and drops anything pushed."""
        return self._closing

    def start_soon(self, fn: Callable[[], Awaitable[None]]) -> bool:
        """Runs `fn` in the connection's nursery (it ends with the connection); False if the
        connection has ended (or the queue is not attached yet)."""
        if self._nursery is None:
            return False
        try:
            self._nursery.start_soon(fn)
        except RuntimeError:  # its nursery closed: the connection ended
            return False
        return True

    async def freed(self) -> None:
        """Returns once frames next leave the queue or their bytes are written (the client
        read), or the queue closes."""
        if self._room is None:
            self._room = trio.Event()
        await self._room.wait()

    async def room(self, frames: int = 1, size: int = 0, spare: bool = False) -> None:
        """Returns once the queue `takes` `frames` more frames of `size` bytes (by default: once
        fewer than `limit` frames wait to be sent)."""
        while not self.takes(frames, size, spare):
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    def _freed(self) -> None:
        """Frames left the queue or their bytes were written: what waits for room looks again."""
        if self._room is not None:
            self._room.set()
            self._room = None

    def _add(self, item: Item) -> None:
        if isinstance(item, OutFrame):
            self._bytes += self._size(item)
        self._items.append(item)
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()
        elif self._writing or self._flushing or self._nursery is None:
            return
        elif self._flusher is not None and self._flusher.running and not self._closing:
            self._flushing = True
            self._flusher.add(self)
        else:
            self._start()

    def flush(self) -> None:
        """The Flusher's turn: frame what waits and write it without waiting; start the writer
        task for what the socket did not take (or for a close, or a batch over `send_bytes`)."""
        self._flushing = False
        try:
            items = self._items
            if len(items) == 1 and not self._writing and not self._closing and self._nursery is not None:
                # One frame (each copy of a group message): _flush's usual case, inlined.
                item = items[0]
                if isinstance(item, OutFrame):
                    data = framed(item, self.binary)
                    if len(data) < self.send_bytes:
                        self._wrote(data, cast(DirectSocket, self._ws).try_send(data))
                        return
            self._flush()
        except Exception:  # noqa: BLE001 - this connection ends, never the Flusher or the node
            log.exception("send_queue_flush_failed")
            self._end()

    def unflushed(self) -> None:
        """The Flusher stopped before this queue's turn (the node stops)."""
        self._flushing = False

    def _flush(self) -> None:
        if self._writing or not self._items:
            return
        if self._closing or self._nursery is None:
            self._poke()
            return
        binary = self.binary
        chunks: list[bytes] = []
        size = 0
        for item in self._items:
            if isinstance(item, OutFrame):
                data = framed(item, binary)
            elif isinstance(item, bytes):
                data = item
            else:  # a Rest or a Close: only a queue with a writer has them
                self._start()
                return
            chunks.append(data)
            size += len(data)
            if size >= self.send_bytes:
                self._start()
                return
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._wrote(data, cast(DirectSocket, self._ws).try_send(data))

    def _wrote(self, data: bytes, written: int) -> None:
        """After a direct write of everything queued (`data`): the queue is empty, or the writer
        task sends what the socket did not take, first."""
        if written == len(data):
            self._items = []
            self._bytes = 0
            self._freed()
            return
        if written:
            self._items = [Rest(data[written:])]  # the writer sends the rest first
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
                self._freed()
                close = await self._send_batch(batch, number)
                if number != self._batch:
                    continue  # aborted: self._items holds the close
                if close is not None:
                    await self._send_close(close)
                    return
                if not self._items:
                    self._bytes = 0  # all written (forgets any drift of a switch to binary)
                    self._freed()
                    self._wake = trio.Event()
                    with trio.move_on_after(self.linger_s):
                        await self._wake.wait()
                    self._wake = None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._end()  # the peer went away; the reader sees it too
        finally:
            self._writing = False

    async def _send_batch(self, batch: list[Item], number: int) -> Close | None:
        """Frames and writes `batch` up to its Close (returned), `send_bytes` a write; stops
        early if an abort() starts a new batch."""
        binary = self.binary
        chunks: list[bytes] = []
        size = counted = 0
        for item in batch:
            if isinstance(item, Close):
                break
            if isinstance(item, bytes):
                data = item
            elif isinstance(item, Rest):
                data = item.data
            else:
                counted += len(item.payload(binary))
                data = framed(item, binary)
            chunks.append(data)
            size += len(data)
            if size >= self.send_bytes:
                await self._ws.send_all(b"".join(chunks))
                self._bytes = max(0, self._bytes - counted)
                self._freed()
                chunks, size, counted = [], 0, 0
                if number != self._batch:
                    return None
        else:
            item = None
        if chunks:
            await self._ws.send_all(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            self._bytes = max(0, self._bytes - counted)
            self._freed()
        return item if isinstance(item, Close) else None

    async def _send_close(self, item: Close) -> None:
        try:
            data = framed(item.frame, self.binary) if item.frame is not None else b""
            data += self._ws.close_frame(int(item.code), item.reason)
            if data:
                await self._ws.send_all(data)
        finally:
            self._end()

    def _end(self) -> None:
        self._closing = True
        self._items = []
        self._bytes = 0
        if self._room is not None:
            self._room.set()
        if self._scope is not None:
            self._scope.cancel()
