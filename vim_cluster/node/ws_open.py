"""Opening a client WebSocket to another node (the forward link, operator tools) with a cause.

`open_link` makes the TCP connection, the TLS handshake and the WebSocket upgrade itself
(websockets' sans-I/O client protocol, no trio-websocket task or channel: the link's one
reader reads the socket, issue 12), step by step, and raises `LinkOpenError` naming the URL and the cause: connection refused, timeout (of
which step), cannot resolve the host, TLS certificate verification failed (with OpenSSL's
reason, e.g. the hostname mismatch), the WebSocket upgrade rejected. (trio-websocket's
`open_websocket_url` reports a refused TCP connection as `HandshakeError` with an empty text
and a failed TLS verification as a connect timeout.)
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidMessage, InvalidStatus, InvalidURI
from websockets.frames import Frame
from websockets.http11 import Response
from websockets.uri import parse_uri

from .ws_messages import MessageSocket
from .ws_server import RECEIVE_BYTES, ServerSocket

CLOSE_TIMEOUT = 5.0


class LinkOpenError(Exception):
    """A WebSocket to `url` could not be opened; `cause` says why in a few words."""

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(f"cannot reach {url}: {cause}")
        self.url = url
        self.cause = cause


@contextlib.asynccontextmanager
async def open_link(url: str, ssl_context: ssl.SSLContext | None, *, timeout: float,
                    max_message_size: int) -> AsyncIterator[MessageSocket]:
    """`async with open_link(url, ctx, ...) as ws:` a WebSocket to a ws:// or wss:// URL, with
    trio-websocket's message API (node/ws_messages.MessageSocket) and no task of its own.

    Raises LinkOpenError if it cannot be opened; errors of the body propagate as they are.
    On exit the close handshake gets CLOSE_TIMEOUT, then the TCP connection is closed."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "wss" else 80)
    stream = await _connect(url, host, port, ssl_context if parts.scheme == "wss" else None, timeout)
    try:
        ws = await _upgrade(url, stream, timeout, max_message_size)
        try:
            yield ws
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT) as closing:
                closing.shield = True
                await ws.aclose()
    finally:
        await trio.aclose_forcefully(stream)


async def _connect(url: str, host: str, port: int, ssl_context: ssl.SSLContext | None,
                   timeout: float) -> trio.abc.Stream:
    try:
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise LinkOpenError(url, f"timeout: no TCP connection to {host}:{port} within {timeout:g} s") from None
    except OSError as exc:
        raise LinkOpenError(url, _os_cause(exc, host, port)) from None
    if ssl_context is None:
        return tcp
    tls = trio.SSLStream(tcp, ssl_context, server_hostname=host, https_compatible=True)
    try:
        with trio.fail_after(timeout):
            await tls.do_handshake()
    except trio.TooSlowError:
        await trio.aclose_forcefully(tcp)
        raise LinkOpenError(url, f"timeout: no TLS handshake with {host}:{port} within {timeout:g} s") from None
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(tcp)
        raise LinkOpenError(url, _tls_cause(exc.__cause__, host)) from None
    return tls


def _os_cause(exc: BaseException, host: str, port: int) -> str:
    """The first telling error in `exc`'s chain (trio reports 'all attempts failed')."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        seen.append(current)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for nxt in (current.__cause__, current.__context__):
            if nxt is not None and nxt not in seen:
                pending.append(nxt)
    for error in seen:
        if isinstance(error, ConnectionRefusedError):
            return f"connection refused by {host}:{port} (is the node running and the port right?)"
        if isinstance(error, socket.gaierror):
            return f"cannot resolve the host {host!r}: {error.strerror or error}"
        if isinstance(error, TimeoutError):
            return f"timeout connecting to {host}:{port}"
    for error in seen:
        if isinstance(error, OSError) and error.strerror:
            return f"cannot connect to {host}:{port}: {error.strerror}"
    return f"cannot connect to {host}:{port}: {exc}"


def _tls_cause(exc: BaseException | None, host: str) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed for {host}: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {host} failed: {exc.reason or exc}"
    return f"{host} closed the connection during the TLS handshake (is the master-url scheme right?)"


async def _upgrade(url: str, stream: trio.abc.Stream, timeout: float, max_message_size: int) -> MessageSocket:
    """The client's side of the WebSocket handshake (websockets' ClientProtocol)."""
    try:
        client = ClientProtocol(parse_uri(url))
    except InvalidURI as exc:
        raise LinkOpenError(url, str(exc)) from None
    client.send_request(client.connect())
    try:
        with trio.fail_after(timeout):
            await stream.send_all(b"".join(client.data_to_send()))
            while True:
                data = bytes(await stream.receive_some(RECEIVE_BYTES))
                if not data:
                    raise LinkOpenError(url, "the connection closed during the WebSocket upgrade")
                client.receive_data(data)
                client.data_to_send()  # nothing to send for a response (an EOF after a failure)
                events = client.events_received()
                failed = client.handshake_exc
                if isinstance(failed, InvalidStatus):
                    raise LinkOpenError(url, f"the WebSocket upgrade was rejected with HTTP {failed.response.status_code}")
                if isinstance(failed, InvalidMessage):
                    raise LinkOpenError(url, f"the answer to the WebSocket upgrade is not HTTP ({failed.__cause__ or failed}): "
                                             "is it a vim-cluster port, and ws/wss right?")
                if failed is not None:
                    raise LinkOpenError(url, f"the answer to the WebSocket upgrade is not a valid one ({failed})")
                if events and isinstance(events[0], Response):
                    socket = ServerSocket(stream, max_message_size)
                    socket.opened(client, frames=[e for e in events[1:] if isinstance(e, Frame)])
                    return MessageSocket(socket)
    except trio.TooSlowError:
        raise LinkOpenError(url, f"timeout: no WebSocket upgrade within {timeout:g} s "
                                 "(is it a vim-cluster port, and ws/wss right?)") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise LinkOpenError(url, f"the connection broke during the WebSocket upgrade ({exc})") from None
