"""node/ws_messages.MessageSocket, the forward port's server side: trio-websocket's message API
over the lean server (node/ws_server.py), against the slave's own client (node/ws_open.open_link,
a MessageSocket on wsproto's client side) and trio-websocket's client, on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from vim_cluster.node.ws_messages import MessageSocket
from vim_cluster.node.ws_open import open_link
from vim_cluster.node.ws_server import Request, serve_websockets

Handler = Callable[[MessageSocket], Awaitable[None]]


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
