"""`MessageSocket`: the message API of trio-websocket's WebSocketConnection (`get_message`,
`send_message`, `aclose`, `ConnectionClosed`) over a lean server WebSocket
(node/ws_server.ServerSocket).

The forward link's code (node/link.py) speaks that API to both ends of a link, and both are
this: the master side served by node/ws_server.py like the client port, the slave side (and
the operator tools' links) opened by node/ws_open.open_link with websockets' client protocol.
One task per connection: no reader task, no channel, no kept handshake, frames written with
one `send_all` (issue 12). What the lean server
enforces holds on the forward port too: handshake deadline, message and fragment caps,
a close frame with the right code for a peer that breaks the WebSocket protocol.

Rules:
- One task reads (`get_message`); any task may send: sends are serialised by a lock, and a
  frame is never cut by another.
- A ping is answered with the newest pong only (RFC 6455 §5.5.3), sent once the data read so
  far is handled (before the reader waits for more), or ahead of a message sent before that.
- `aclose(code, reason)` sends the close frame, waits CLOSE_WAIT_S at most for the peer's
  (read by the task reading, if one is: a connection replaced by a newer one), then closes
  the TCP connection, which also ends a read still waiting.
"""

from __future__ import annotations

import trio
from trio_websocket import CloseReason, ConnectionClosed

from ..errors import Disconnect, PeerClosed
from .ws_server import NotOpen, ServerSocket

ABNORMAL = 1006  # RFC 6455: the connection ended without a close frame (never sent)
CLOSE_WAIT_S = 1.0  # how long aclose waits for the peer's close frame when nobody else reads


class MessageSocket:
    __slots__ = ("_socket", "_lock", "_pong", "_closed", "_reading", "_read_ended")

    def __init__(self, socket: ServerSocket) -> None:
        self._socket = socket
        self._lock = trio.StrictFIFOLock()
        self._pong: bytes | None = None  # the answer to the newest ping, not yet sent
        self._closed: CloseReason | None = None
        self._reading = False
        self._read_ended: trio.Event | None = None  # set when a read in progress ends (aclose waits)

    def raise_message_limit(self, max_message_size: int) -> None:
        """From now on, accept messages of up to `max_message_size` bytes."""
        self._socket.raise_message_limit(max_message_size)

    async def get_message(self) -> str | bytes:
        """The next message; ConnectionClosed once the connection is closed (by either side,
        or broken: then the close frame with the reason was sent first)."""
        if self._closed is not None:
            raise ConnectionClosed(self._closed)
        self._reading = True
        try:
            message = await self._socket.receive(self._answer_ping, self._send_pong)
        except Disconnect as exc:
            # The failure's close frame, or our answer to the peer's (none once the TCP
            # connection is gone: close_frame knows).
            await self._send_close(int(exc.code), exc.reason)
            if isinstance(exc, PeerClosed):  # what the peer said, as trio-websocket reports it
                self._closed = self._closed or CloseReason(exc.peer_code, exc.peer_reason)
            self._closed = self._closed or CloseReason(int(exc.code), exc.reason)
            raise ConnectionClosed(self._closed) from None
        finally:
            self._reading = False
            if self._read_ended is not None:
                self._read_ended.set()
        return message

    async def send_message(self, message: str | bytes) -> None:
        """Sends one message (bytes: a binary frame, str: a text frame)."""
        if self._closed is not None:
            raise ConnectionClosed(self._closed)
        try:
            data = self._socket.message_frame(message)
        except NotOpen:  # a client's WebSocket whose close began
            self._closed = CloseReason(ABNORMAL, "the peer is closing the connection")
            raise ConnectionClosed(self._closed) from None
        await self._write(data)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Closes the WebSocket with `code` (see the module's rules); never raises."""
        if self._closed is None:
            self._closed = CloseReason(code, reason)
            await self._send_close(code, reason or "")
        if self._reading:  # the reader sees the peer's close frame, or the TCP close below
            self._read_ended = trio.Event()
            with trio.move_on_after(CLOSE_WAIT_S):
                await self._read_ended.wait()
        else:
            await self._socket.await_close(CLOSE_WAIT_S)
        await trio.aclose_forcefully(self._socket.stream)

    def _answer_ping(self, pong: bytes) -> None:
        self._pong = pong

    async def _send_pong(self) -> None:
        """Before the reader waits for more data: the pong of the newest ping, if one waits."""
        if self._pong is not None and self._closed is None:
            try:
                await self._write(b"")
            except ConnectionClosed:
                pass  # the reader finds out by its read

    async def _write(self, data: bytes) -> None:
        if self._closed is not None:
            raise ConnectionClosed(self._closed)
        async with self._lock:
            pong, self._pong = self._pong, None
            if pong is not None:
                data = pong + data
            if not data:
                return
            try:
                await self._socket.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._closed = self._closed or CloseReason(ABNORMAL, f"connection lost: {exc}")
                raise ConnectionClosed(self._closed) from None

    async def _send_close(self, code: int, reason: str) -> None:
        data = self._socket.close_frame(code, reason)
        if not data:
            return
        async with self._lock:
            try:
                await self._socket.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the peer is gone: there is no one left to tell
