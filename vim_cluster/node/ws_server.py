"""The server side of client WebSockets, lean: h11 for the handshake, websockets' sans-I/O
protocol for the frames.

One trio task per connection (`serve_websockets` runs `handler(socket, request)` in it), no
reader task, no channel, nothing kept from the handshake once it is done. The connection's
owner reads with `receive()` and writes pre-framed bytes with `send_all()`; only one task may
write at a time (node/send_queue.py's writer is that task).

Rules:
- With an `admission` (node/admission.py), a connection is counted from its accept, before
  its first byte is read, until its socket closes; one over the port's caps is answered
  (HTTP 429 or 503, `connection limit: ...`) and closed without its request being read.
- The handshake must arrive within `handshake_timeout`; a request that is not a WebSocket
  upgrade (a plain GET, a POST, a TLS hello on a plain port, one cut off by the client's FIN)
  gets an HTTP 400 (426 for another WebSocket version, 431 for an oversized URL or header,
  408 for one begun and not whole in time) and the connection ends at once (`_refuse`).
  `request.reject(status, body)` refuses one (401 for a bad token, 503 while draining).
- A peer that breaks the WebSocket protocol (invalid UTF-8 in a text frame, a bad opcode,
  an unmasked frame...) gets `Disconnect` with its code (1007 for invalid UTF-8, 1002
  otherwise) and a reason that says what was wrong: the owner
  sends the close frame (`close_frame`), as RFC 6455 §7.1.7 asks, before the TCP close.
- A message larger than `max_message_size` (characters of a text frame, bytes of a binary
  one), or in more than `max_fragments(max_message_size)` pieces, is `Disconnect` 1009.
- A WebSocket ping is answered by a pong through `on_pong` (the owner queues it behind the
  frames it sends); only the newest unanswered ping needs an answer (RFC 6455 §5.5.3).
- When the handler returns, a close frame it sent is given `close_timeout` for the peer's
  answer (its data is read and dropped), then the TCP connection is closed, whatever state
  the WebSocket is in. After a frame that could not be parsed, what the peer still sends is
  read and dropped until its TCP close (on plain TCP our side is ended first; TLS cannot
  half-close), so the peer sees our close code, never a reset.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import struct
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any, Protocol, cast

import h11
import structlog
import trio
from websockets.exceptions import PayloadTooBig
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import Protocol as WebSocketProtocol
from websockets.protocol import Side

from ..core.conn_caps import Slot
from ..errors import CloseCode, Disconnect, PeerClosed
from .admission import Admission

log = structlog.get_logger()
RECEIVE_BYTES = 65536  # one read from the socket
MAX_REQUEST = 16384  # bytes of the HTTP upgrade request (URL and headers)
REFUSAL_TIMEOUT = 2.0  # to answer a handshake that is not one, and drop what its client still sends
UTF8_REASON = "a text frame is not valid UTF-8"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def max_fragments(max_message_size: int) -> int:
    """Pieces one message may arrive in: plenty for a whole frame read in TCP-sized chunks."""
    return max(1024, max_message_size // 512)


def frame_header(opcode: int, length: int) -> bytes:
    """The header of a final, unmasked (server to client) frame of `length` bytes."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def frame(payload: str | bytes, binary: bool) -> bytes:
    """One final frame carrying `payload`: binary for bytes on a `binary` (MessagePack)
    connection, text otherwise (a str, or UTF-8 bytes such as JSON on a text connection)."""
    if isinstance(payload, str):
        data = payload.encode()
        return frame_header(0x1, len(data)) + data
    return frame_header(0x2 if binary else 0x1, len(payload)) + payload


class Flushable(Protocol):
    """A connection's queue of outgoing frames, as the Flusher sees it (node/send_queue.py)."""

    def flush(self) -> None:
        """Write what waits without waiting (this pass's turn); never raises."""

    def unflushed(self) -> None:
        """The Flusher stopped before this one's turn."""


class Flusher:
    """Write-through for the connections of one listener: once per scheduler pass, every queue
    that asked (`add`, never blocks) writes what waits with `try_send` (node/send_queue.py's
    docstring says why). `run` is its one task."""

    __slots__ = ("_dirty", "_task", "_parked")

    def __init__(self) -> None:
        self._dirty: list[Flushable] = []
        self._task: trio.lowlevel.Task | None = None
        self._parked = False

    @property
    def running(self) -> bool:
        return self._task is not None

    def add(self, queue: Flushable) -> None:
        self._dirty.append(queue)
        if self._parked:
            self._parked = False
            assert self._task is not None
            trio.lowlevel.reschedule(self._task)

    async def run(self) -> None:
        self._task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._parked = False
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            while True:
                if not self._dirty:
                    self._parked = True
                    await trio.lowlevel.wait_task_rescheduled(abort)
                else:
                    await trio.lowlevel.checkpoint()  # let this pass's other tasks queue theirs too
                dirty, self._dirty = self._dirty, []
                for queue in dirty:
                    queue.flush()
        finally:
            self._task = None  # stopped with the listener (the node stops): queues use their writers
            for queue in self._dirty:
                queue.unflushed()
            self._dirty = []


class Rejected(Exception):
    """The handshake request was refused with an HTTP error (already sent)."""


class Request:
    """A WebSocket upgrade request, until `accept` or `reject` answers it."""

    __slots__ = ("path", "remote", "origin", "host", "slot", "_socket", "_key", "_trailing")

    def __init__(self, socket: ServerSocket, path: str, remote: str, key: bytes, trailing: bytes,
                 origin: str | None = None, host: str = "", slot: Slot | None = None) -> None:
        self._socket = socket
        self._key = key
        self._trailing = trailing  # frames the client sent right behind its request
        self.path = path
        self.remote = remote  # the peer's address ("" if unknown)
        self.origin = origin  # the Origin header (browsers send one; native clients none)
        self.host = host  # the Host header
        self.slot = slot  # the connection's place in the port's caps (None: the port has none)

    async def accept(self) -> ServerSocket:
        token = base64.b64encode(hashlib.sha1(self._key + _GUID).digest())
        self._socket.opened(WebSocketProtocol(Side.SERVER), self._trailing)
        self._trailing = b""
        await self._socket.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + token + b"\r\n\r\n")
        return self._socket

    async def reject(self, status: int, body: bytes = b"") -> None:
        await self._socket.send_all(_response(status, body))


def _response(status: int, body: bytes) -> bytes:
    """A whole HTTP response that ends the exchange (the connection closes after it)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class NotOpen(Exception):
    """A message frame was asked of a WebSocket that is closing (a close frame went either way)."""


class ServerSocket:
    """One accepted client WebSocket: reads messages, writes pre-framed bytes. Also the
    client side of a forward link (`protocol` of a finished client handshake, node/ws_open.py):
    then its frames are masked, as a client's must be (`message_frame`).

    websockets' sans-I/O `Protocol` parses the frames (its C extension unmasks them: a third
    of wsproto's CPU per frame, issue 12) and checks RFC 6455; everything this socket sends
    (pongs, close frames, messages) it frames itself, so the protocol's own answers are
    dropped."""

    __slots__ = ("stream", "_ws", "_events", "_parts", "_text", "_size", "_max", "_closing", "_peer_closed",
                 "broken", "flusher", "_fd")

    def __init__(self, stream: trio.abc.Stream, max_message_size: int, flusher: Flusher | None = None) -> None:
        self.stream = stream
        self.flusher = flusher  # the listener's write-through (node/send_queue.py)
        # A plain TCP socket can be written without waiting (try_send); -1: no (TLS), or ended.
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self._ws: WebSocketProtocol | None = None  # until the handshake is done (`opened`)
        self._events: list[Frame] = []  # frames read, not yet handled
        self._parts: list[bytes] | None = None  # the message being received, by piece
        self._text = False  # the message being received is text
        self._size = 0
        self._max = max_message_size
        self._closing = False  # our close frame was made, or the TCP connection ended: none to make
        self._peer_closed = False  # the peer's close frame came
        self.broken = False  # a write was cut in the middle: only dropping the TCP connection is left

    def opened(self, protocol: WebSocketProtocol, trailing: bytes = b"", frames: Sequence[Frame] = ()) -> None:
        """The handshake is done: `protocol` parses the frames from now on; `trailing`: bytes
        read behind the handshake, `frames`: frames the protocol already parsed (a client's)."""
        protocol.max_message_size = _byte_cap(self._max)
        self._ws = protocol
        self._events = list(frames)
        if trailing:
            self._feed(trailing)

    def raise_message_limit(self, max_message_size: int) -> None:
        """From now on, accept messages of up to `max_message_size` bytes."""
        self._max = max(self._max, max_message_size)
        if self._ws is not None:
            self._ws.max_message_size = _byte_cap(self._max)

    async def receive(self, on_pong: Callable[[bytes], None],
                      before_read: Callable[[], Awaitable[None]] | None = None) -> str | bytes:
        """The next message. Raises Disconnect: with the close code to send when the peer broke
        the protocol, closed (1000) or went away (then `close_frame` gives nothing to send).
        `before_read`, if given, is awaited before each wait for more data (an owner that
        writes its pongs itself sends them there)."""
        ws = self._ws
        assert ws is not None
        while True:
            events = self._events
            while events:
                frame = events.pop(0)
                opcode = frame.opcode
                if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                    message = self._piece(frame)
                    if message is not None:
                        return message
                elif opcode is Opcode.PING:
                    on_pong(Frame(Opcode.PONG, frame.data).serialize(mask=ws.side is Side.CLIENT))
                elif opcode is Opcode.CLOSE:
                    self._peer_closed = True
                    close = ws.close_rcvd  # parsed (and checked) by the protocol
                    assert close is not None
                    raise PeerClosed(close.code, close.reason)
            if ws.parser_exc is not None:  # the peer broke the protocol; frames before it were read
                raise Disconnect(*self._failure(ws.parser_exc))
            if before_read is not None:
                await before_read()
            try:
                data = cast(bytes, await self.stream.receive_some(RECEIVE_BYTES))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._closing = True
                raise Disconnect(CloseCode.NORMAL, "connection lost")
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        ws = self._ws
        assert ws is not None
        ws.receive_data(data)
        ws.data_to_send()  # its pongs and close answers: this socket writes its own
        self._events += cast(list[Frame], ws.events_received())  # frames only, once it is open

    def _failure(self, exc: Exception) -> tuple[CloseCode, str]:
        if isinstance(exc, PayloadTooBig):
            return CloseCode.TOO_BIG, f"message larger than {self._max} bytes"
        if isinstance(exc, UnicodeDecodeError):  # a close frame's reason
            return CloseCode.INVALID_DATA, f"{UTF8_REASON}: {exc.reason}"[:120]
        return CloseCode.PROTOCOL_ERROR, f"protocol error: {exc}"[:120]

    def _piece(self, frame: Frame) -> str | bytes | None:
        data = bytes(frame.data)
        if frame.opcode is not Opcode.CONT:
            self._text = frame.opcode is Opcode.TEXT
            if frame.fin and len(data) <= self._max:
                return self._decoded(data) if self._text else data  # the usual case: one piece
            self._parts, self._size = [], 0
        parts = self._parts
        if parts is None:  # websockets refuses a continuation with no message begun
            raise Disconnect(CloseCode.PROTOCOL_ERROR, "protocol error: unexpected continuation frame")
        parts.append(data)
        self._size += len(data)
        if self._size > (_byte_cap(self._max) if self._text else self._max):
            self._parts = None
            raise Disconnect(CloseCode.TOO_BIG, f"message larger than {self._max} bytes")
        if not frame.fin:
            if len(parts) >= max_fragments(self._max):
                self._parts = None
                raise Disconnect(CloseCode.TOO_BIG, f"a message in more than {max_fragments(self._max)} fragments")
            return None
        self._parts = None
        return self._decoded(b"".join(parts)) if self._text else b"".join(parts)

    def _decoded(self, data: bytes) -> str:
        """A text message (at most `_max` characters: a limit in characters, as wsproto's was)."""
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise Disconnect(CloseCode.INVALID_DATA, f"{UTF8_REASON}: {exc.reason} at byte {exc.start}"[:120]) from None
        if len(text) > self._max:
            raise Disconnect(CloseCode.TOO_BIG, f"message larger than {self._max} bytes")
        return text

    def message_frame(self, message: str | bytes) -> bytes:
        """`message` as one frame (bytes: binary, str: text), masked on a client's side.
        Raises NotOpen on a client WebSocket whose close began (either way)."""
        ws = self._ws
        if ws is not None and ws.side is Side.CLIENT:
            if self._closing or self._peer_closed:
                raise NotOpen("the WebSocket is closing")
            if isinstance(message, bytes):
                return Frame(Opcode.BINARY, message).serialize(mask=True)
            return Frame(Opcode.TEXT, message.encode()).serialize(mask=True)
        return frame(message, isinstance(message, bytes))

    def close_frame(self, code: int, reason: str) -> bytes:
        """The close frame to send (b"" once one was made, or once the connection ended)."""
        ws = self._ws
        if ws is None or self._closing:
            return b""
        self._closing = True
        return Frame(Opcode.CLOSE, Close(code, reason).serialize()).serialize(mask=ws.side is Side.CLIENT)

    @property
    def writes_directly(self) -> bool:
        """Whether `try_send` can write (a plain TCP socket, still open); TLS cannot."""
        return self._fd >= 0

    def try_send(self, data: bytes) -> int:
        """Writes what the socket takes now, without waiting; returns how many bytes (0 when
        its buffer is full, the peer is gone, or there is no direct way: TLS). Only the one
        writer of the connection may call it (the Flusher, while the queue has no writer task)."""
        if self._fd < 0:
            return 0
        try:
            return os.write(self._fd, data)
        except OSError:  # full (EAGAIN), or gone: the writer task waits, or finds out and ends
            return 0

    def ended(self) -> None:
        """The connection is over: never write to its file descriptor again (it may be reused)."""
        self._fd = -1

    async def send_all(self, data: bytes) -> None:
        """Writes `data` (whole frames); `broken` if cancelled or failed in the middle."""
        self.broken = True
        await self.stream.send_all(data)
        self.broken = False

    async def await_close(self, timeout: float) -> None:
        """After our close frame: read (and drop) until the peer's close or EOF, for `timeout`.

        After a frame we could not parse (too big, malformed), the peer's close frame can no
        longer be found in what it sends: we end our side (FIN, where the stream can) and drop
        its bytes until its TCP close. Closing with its data unread would make the kernel
        reset the connection, and a peer still writing (the rest of its oversized message)
        would then see the reset, not our close frame with its code."""
        ws = self._ws
        if ws is None or not self._closing:
            return
        framed = ws.parser_exc is None
        with trio.move_on_after(timeout):
            if not framed and isinstance(self.stream, trio.abc.HalfCloseableStream):
                try:
                    await self.stream.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            while not self._peer_closed:
                if any(frame.opcode is Opcode.CLOSE for frame in self._events):
                    return
                self._events = []
                try:
                    data = cast(bytes, await self.stream.receive_some(RECEIVE_BYTES))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                if framed:
                    self._feed(data)
                    framed = ws.parser_exc is None


def _byte_cap(max_message_size: int) -> int:
    """The bytes a message of `max_message_size` may take: a text message's limit is in
    characters, up to 4 bytes each in UTF-8."""
    return 4 * max_message_size


Handler = Callable[[Request], Awaitable[None]]


async def serve_websockets(handler: Handler, listeners: Sequence[trio.abc.Listener[trio.abc.Stream]], *,
                           max_message_size: int, handshake_timeout: float = 10.0, close_timeout: float = 5.0,
                           admission: Admission | None = None,
                           task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED) -> None:
    """Accepts connections on `listeners` for ever; `handler(request)` runs in each one's task.
    With `admission`, a connection over its caps is answered at its accept and closed, and
    one within them holds its slot (`Request.slot`) until its socket closes."""

    flusher = Flusher()

    async def connection(stream: trio.abc.Stream) -> None:
        remote = _remote(stream)
        slot = None
        if admission is not None:
            slot = await admission.enter(stream, remote)
            if slot is None:
                return
        socket = ServerSocket(stream, max_message_size, flusher)
        try:
            request = await _read_request(socket, remote, handshake_timeout, slot)
            if request is not None:
                serving = handler(request)
                del request  # the handler keeps what it needs of it, nothing more
                await serving
                if not socket.broken:
                    await socket.await_close(close_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("websocket_stream_ended", error=str(exc))
        except Exception:  # noqa: BLE001 - one connection, never the listener
            log.exception("websocket_connection_crashed")
        finally:
            socket.ended()
            if slot is not None:
                slot.release()
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher.run)
        task_status.started(await nursery.start(functools.partial(trio.serve_listeners, connection,
                                                                  list(listeners))))


async def _read_request(socket: ServerSocket, remote: str, timeout: float, slot: Slot | None) -> Request | None:
    """The upgrade request within `timeout`, or None after answering one that is not (400/426,
    431 for a head over MAX_REQUEST, 408 for one begun and not whole in time) or after a
    connection that closed, or stayed silent, before its first byte."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    refusal: tuple[int, str] | None = None
    received = 0
    with trio.move_on_after(timeout) as reading:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                refusal = exc.error_status_hint, f"bad HTTP request: {exc}"
                break
            if event is h11.NEED_DATA:
                data = cast(bytes, await socket.stream.receive_some(RECEIVE_BYTES))
                received += len(data)
                conn.receive_data(data)  # b"": EOF
                continue
            if not isinstance(event, h11.Request):
                return None  # the peer closed before a byte
            headers = dict(event.headers)
            trailing = bytes(conn.trailing_data[0])
            if received - len(trailing) > MAX_REQUEST:  # h11 counts only a head still incomplete
                refusal = 431, f"bad HTTP request: head larger than {MAX_REQUEST} bytes"
            elif (event.method != b"GET" or b"websocket" not in headers.get(b"upgrade", b"").lower()
                    or b"upgrade" not in headers.get(b"connection", b"").lower()
                    or b"sec-websocket-key" not in headers):
                refusal = 400, "this port speaks WebSocket: send a GET with Upgrade: websocket"
            elif headers.get(b"sec-websocket-version") != b"13":
                refusal = 426, "WebSocket version 13 only"
            else:
                origin = headers.get(b"origin")
                return Request(socket, event.target.decode("ascii", "replace"), remote,
                               headers[b"sec-websocket-key"], trailing,
                               origin.decode("latin-1") if origin is not None else None,
                               headers.get(b"host", b"").decode("latin-1"), slot)
            break
    if reading.cancelled_caught and (conn.their_state is not h11.IDLE or conn.trailing_data[0]):
        refusal = 408, f"no whole upgrade request within {timeout:g} s"  # a request began: say why it ends
    if refusal is not None:
        await _refuse(socket, remote, *refusal)
    return None


async def _refuse(socket: ServerSocket, remote: str, status: int, reason: str) -> None:
    """Answers a handshake that is not one, within REFUSAL_TIMEOUT; logged at debug (anyone
    can send these).

    What the client still sends (the rest of an oversized request) is read and dropped after
    our side ended: closing with data unread would make the kernel reset the connection, and
    the client would see the reset, not the answer."""
    log.debug("handshake_refused", remote=remote, status=status, reason=reason[:200])
    stream = socket.stream
    with trio.move_on_after(REFUSAL_TIMEOUT):
        await socket.send_all(_response(status, reason.encode()))
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        while await stream.receive_some(RECEIVE_BYTES):
            pass


def _remote(stream: trio.abc.Stream) -> str:
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(inner, trio.SocketStream):
        return ""
    try:
        peer = inner.socket.getpeername()
    except OSError:
        return ""
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)
