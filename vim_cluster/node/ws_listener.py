"""`ListenerServer`: trio-websocket's WebSocketServer, with what its connections lack.

- A peer that breaks the WebSocket protocol (wsproto's ParseFailed: invalid UTF-8 in a text
  frame, a bad opcode, a masked frame from the wrong side...) gets a close frame with the
  code wsproto chose (1007 for invalid UTF-8, 1002 otherwise) and a reason that says what
  was wrong, before the TCP connection ends. trio-websocket 0.12 only drops the TCP
  connection, as if the peer had closed: RFC 6455 §7.1.7 says the endpoint fails the
  connection by sending a close frame first.
- A message may come in at most `max_fragments(max_message_size)` pieces (frames, or parts
  of frames as they arrive): trio-websocket keeps every piece in a list until the message
  ends and counts only their bytes, so a message in endless empty fragments grew without
  limit. Past the cap the connection closes with 1009.
- When the handler is done (a rejected handshake included), the TCP connection is closed.
  trio-websocket 0.12 leaves a rejected one open until the client closes it.
- `ListenerConnection.raise_message_limit(n)`: a listener may start its connections with a
  small frame cap (unauthenticated peers cannot make it buffer much) and raise it once the
  peer has proved who it is.
These lean on trio-websocket's private names (`_handle_close_connection_event`,
`_handle_message_event`, `_wsproto`, `_message_parts`, `_max_message_size`,
`WebSocketServer._handle_connection`); `tests/adversarial` checks each behaviour over real
sockets, so an upgrade that moves them fails there first.
"""

from __future__ import annotations

import trio
from trio_websocket import WebSocketConnection, WebSocketServer
from trio_websocket._impl import CloseReason
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, TextMessage
from wsproto.frame_protocol import CloseReason as Code

UTF8_REASON = "a text frame is not valid UTF-8"


class ListenerConnection(WebSocketConnection):
    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        if self._wsproto.state is ConnectionState.OPEN:
            # Not a close frame from the peer: wsproto failed to parse its data. Fail the
            # connection as RFC 6455 says: our close frame, then the TCP close (below).
            reason = _reason(event)
            self._close_reason = CloseReason(event.code, reason)
            await self._send(CloseConnection(code=event.code, reason=reason))
            event = CloseConnection(code=event.code, reason=reason)
        await super()._handle_close_connection_event(event)

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        if not event.message_finished and len(self._message_parts) >= max_fragments(self._max_message_size):
            reason = f"a message in more than {max_fragments(self._max_message_size)} fragments"
            self._message_size = 0
            self._message_parts = []
            self._close_reason = CloseReason(Code.MESSAGE_TOO_BIG, reason)
            await self._send(CloseConnection(code=Code.MESSAGE_TOO_BIG, reason=reason))
            await self._recv_channel.aclose()
            self._reader_running = False
            return
        await super()._handle_message_event(event)

    def raise_message_limit(self, max_message_size: int) -> None:
        """From now on, accept messages of up to `max_message_size` bytes."""
        self._max_message_size = max(self._max_message_size, max_message_size)


def max_fragments(max_message_size: int) -> int:
    """Pieces one message may arrive in: plenty for a whole frame read in TCP-sized chunks."""
    return max(1024, max_message_size // 512)


def _reason(event: CloseConnection) -> str:
    detail = event.reason or ""
    if event.code == Code.INVALID_FRAME_PAYLOAD_DATA:
        return f"{UTF8_REASON}: {detail}"[:120]
    return f"protocol error: {detail}"[:120]


class ListenerServer(WebSocketServer):
    """trio-websocket's WebSocketServer (same arguments), whose connections are
    ListenerConnections and end their TCP connection when the handler is done."""

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        # trio-websocket's own, with ListenerConnection in place of WebSocketConnection.
        async with trio.open_nursery() as nursery:
            connection = ListenerConnection(
                stream, WSConnection(ConnectionType.SERVER),
                message_queue_size=self._message_queue_size,
                max_message_size=self._max_message_size,
                receive_buffer_size=self._receive_buffer_size)
            nursery.start_soon(connection._reader_task)
            with trio.move_on_after(self._connect_timeout) as connect_scope:
                request = await connection._get_request()
            if connect_scope.cancelled_caught:
                nursery.cancel_scope.cancel()
                await stream.aclose()
                return
            try:
                await self._handler(request)
            finally:
                with trio.move_on_after(self._disconnect_timeout):
                    await connection.aclose()
                # Then end the TCP connection whatever state the WebSocket is in: after a
                # rejected handshake (401) trio-websocket's reader would otherwise wait for the
                # client to hang up, keeping the connection and its tasks for as long as the
                # client likes.
                await trio.aclose_forcefully(stream)
