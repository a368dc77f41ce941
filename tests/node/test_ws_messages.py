"""node/ws_messages.MessageSocket, the forward port's server side: trio-websocket's message API
over the lean server (node/ws_server.py), against the slave's own client (node/ws_open.open_link,
a MessageSocket on websockets' client protocol) and trio-websocket's client, on loopback."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from vim_cluster.node.ws_messages import MessageSocket
from vim_cluster.node.ws_open import LinkOpenError, open_link
from vim_cluster.node.ws_server import Request, frame, serve_websockets

Handler = Callable[[MessageSocket], Awaitable[None]]
RawServer = Callable[[Callable[[bytes], bytes]], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """serve(handler) -> a ws:// URL whose connections run handler(MessageSocket)."""
    opened: list[trio.SocketListener] = []
    async with trio.open_nursery() as nursery:

        async def start(handler: Handler) -> str:
            async def on_request(request: Request) -> None:
                await handler(MessageSocket(await request.accept()))

            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            opened.extend(listeners)
            await nursery.start(lambda task_status: serve_websockets(on_request, listeners, max_message_size=1 << 20,
                                                                     task_status=task_status))
            return f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/forward"

        yield start
        nursery.cancel_scope.cancel()
    for listener in opened:
        await trio.aclose_forcefully(listener)


async def test_messages_go_both_ways_as_text_and_binary(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def echo(ws: MessageSocket) -> None:
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed:
                return
            await ws.send_message(message)

    url = await serve(echo)
    with trio.fail_after(10):
        async with open_link(url, None, timeout=5, max_message_size=1 << 20) as client:
            for message in ("text", b"\x00binary", "x" * 70_000):
                await client.send_message(message)
                assert await client.get_message() == message
        async with open_websocket_url(url) as other:  # another client library: trio-websocket's
            await other.send_message(b"\x01")
            assert await other.get_message() == b"\x01"
            await other.ping(b"p")  # answered (trio-websocket waits for the pong)


async def test_aclose_from_another_task_ends_the_reader_and_tells_the_peer(
        serve: Callable[[Handler], Awaitable[str]]) -> None:
    ended: list[str] = []

    async def replaced(ws: MessageSocket) -> None:
        async with trio.open_nursery() as nursery:
            async def read() -> None:
                try:
                    await ws.get_message()
                except ConnectionClosed as exc:
                    ended.append(str(exc.reason.code) if exc.reason else "?")

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await ws.aclose(1001, "replaced by a new connection")
        with pytest.raises(ConnectionClosed):
            await ws.send_message("after the close")

    url = await serve(replaced)
    with trio.fail_after(10):
        client: MessageSocket
        async with open_link(url, None, timeout=5, max_message_size=1 << 20) as client:
            with pytest.raises(ConnectionClosed) as caught:
                await client.get_message()
            assert caught.value.reason is not None
            assert (caught.value.reason.code, caught.value.reason.reason) == (1001, "replaced by a new connection")
    assert ended == ["1001"]


async def test_a_peer_close_is_answered_and_seen_as_connection_closed(
        serve: Callable[[Handler], Awaitable[str]]) -> None:
    seen = trio.Event()

    async def wait_for_close(ws: MessageSocket) -> None:
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
        seen.set()

    url = await serve(wait_for_close)
    with trio.fail_after(10):
        async with open_link(url, None, timeout=5, max_message_size=1 << 20) as client:
            await client.aclose(1000, "bye")  # returns once the server answered the close
            with pytest.raises(ConnectionClosed) as caught:
                await client.get_message()
            assert caught.value.reason is not None and caught.value.reason.code == 1000
        await seen.wait()


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    """raw_server(answer) -> a ws:// URL whose server reads the request, writes
    `answer(request)` (whatever bytes, in one write) and holds the connection open."""
    async with trio.open_nursery() as nursery:

        async def start(answer: Callable[[bytes], bytes]) -> str:
            async def handler(stream: trio.SocketStream) -> None:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += await stream.receive_some(4096)
                await stream.send_all(answer(request))
                await trio.sleep_forever()

            listeners = await nursery.start(lambda task_status: trio.serve_tcp(handler, 0, host="127.0.0.1",
                                                                               task_status=task_status))
            return f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/forward"

        yield start
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("answer", "cause"), [
    (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
     "the WebSocket upgrade was rejected with HTTP 503"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "the answer to the WebSocket upgrade is not HTTP ("),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n",
     "the answer to the WebSocket upgrade is not a valid one (invalid Sec-WebSocket-Accept header"),
])
async def test_a_refused_or_foreign_upgrade_names_its_cause(raw_server: RawServer, answer: bytes,
                                                           cause: str) -> None:
    url = await raw_server(lambda _: answer)
    with trio.fail_after(5), pytest.raises(LinkOpenError) as failed:
        async with open_link(url, None, timeout=5, max_message_size=1 << 20):
            pass
    assert failed.value.cause.startswith(cause), failed.value.cause
    assert str(failed.value).startswith(f"cannot reach {url}: ")


async def test_frames_that_came_with_the_upgrade_answer_are_read(raw_server: RawServer) -> None:
    """The server's first frames in the same write as its 101: the client reads them (the
    handshake's parser hands them over)."""
    def accept_and_greet(request: bytes) -> bytes:
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        token = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + token + b"\r\n\r\n" + frame("first", False) + frame(b"second", True))

    url = await raw_server(accept_and_greet)
    with trio.fail_after(5):
        async with open_link(url, None, timeout=5, max_message_size=1 << 20) as client:
            assert await client.get_message() == "first"
            assert await client.get_message() == b"second"
