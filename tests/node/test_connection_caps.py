"""Connection caps at a real node's ports (core/conn_caps.py, node/admission.py): per source
address (127.0.0.2 and 127.0.0.1 are two hosts on Linux's loopback), of unauthenticated
connections, node-wide; refused at the accept with 429/503 and freed when a socket closes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio
import trio.testing
from trio_websocket import wrap_client_stream

from vim_cluster.node.app import RunningNode

from ..support import Client, free_port, online, tcp_from

UPGRADE = (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
COUNTED = {"count-loopback": True}  # loopback is exempt by default: these tests' hosts are loopback


class Answer:
    def __init__(self, stream: trio.SocketStream, status: int, headers: dict[str, str], body: bytes) -> None:
        self.stream, self.status, self.headers, self.body = stream, status, headers, body


async def read_answer(stream: trio.SocketStream) -> Answer:
    """The HTTP answer's head (and, unless it is a 101, its body up to the node's close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    if status != 101:
        while chunk := await stream.receive_some(65536):
            body += chunk
    return Answer(stream, status, headers, body)


async def handshake(stack: contextlib.AsyncExitStack, source: str, port: int, path: bytes = b"/") -> Answer:
    """A WebSocket upgrade from `source`; the connection stays open with `stack`."""
    stream = await stack.enter_async_context(await tcp_from(source, port))
    await stream.send_all(UPGRADE % path)
    return await read_answer(stream)


async def hang_up(answer: Answer) -> None:
    """Ends our side and waits for the node's close: by then it released the connection's slot."""
    await answer.stream.send_eof()
    while await answer.stream.receive_some(65536):
        pass


@contextlib.asynccontextmanager
async def client_from(source: str, port: int) -> AsyncIterator[Client]:
    async with trio.open_nursery() as nursery:
        stream = await tcp_from(source, port)
        ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/")
        try:
            yield Client(ws)
        finally:
            await ws.aclose()
            await trio.aclose_forcefully(stream)


def refused(node: RunningNode, port: str, reason: str) -> float:
    text = node.ctx.metrics.render().decode()
    line = f'vim_connections_refused_total{{port="{port}",reason="{reason}"}} '
    return float(text.split(line, 1)[1].split("\n", 1)[0])


async def test_an_address_gets_its_caps_others_are_not_affected_and_a_close_frees_a_slot(start_node) -> None:
    with trio.fail_after(30):
        node = await start_node(websocket={"max-connections-per-address": 3, "max-unauthenticated-per-address": 2,
                                           **COUNTED})
        port, url = node.client_port, f"ws://127.0.0.1:{node.client_port}/"
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")  # from 127.0.0.1
            first = await stack.enter_async_context(client_from("127.0.0.2", port))  # anonymous: pending
            second = await handshake(stack, "127.0.0.2", port)
            assert second.status == 101
            third = await handshake(stack, "127.0.0.2", port)  # a third pending one from that address
            assert third.status == 429 and third.headers["retry-after"] == "10"
            assert third.body == b"connection limit: too many unauthenticated connections from this address (2); retry later\n"
            assert third.headers["connection"] == "close" and int(third.headers["content-length"]) == len(third.body)
            assert (await handshake(stack, "127.0.0.1", port)).status == 101  # another address: unaffected

            await first.ready(token=alice.token, client="pc")  # authenticated: no longer pending
            assert (await handshake(stack, "127.0.0.2", port)).status == 101  # three open, two pending
            fifth = await handshake(stack, "127.0.0.2", port)
            assert fifth.status == 429 and fifth.headers["retry-after"] == "60"
            assert fifth.body == b"connection limit: too many connections from this address (3); retry later\n"
            await first.send("ping", rid="still")  # the authenticated one is served throughout
            assert (await first.expect("pong"))["rid"] == "still"

            await hang_up(second)  # a slot of 127.0.0.2 is free again
            assert (await handshake(stack, "127.0.0.2", port)).status == 101
        assert refused(node, "client", "pending") == 1 and refused(node, "client", "address") == 1
        assert refused(node, "client", "node") == 0


async def test_loopback_is_exempt_by_default_but_not_from_the_node_wide_cap(start_node) -> None:
    with trio.fail_after(30):
        node = await start_node(websocket={"max-connections-per-address": 1, "max-connections": 3})
        async with contextlib.AsyncExitStack() as stack:
            for source in ("127.0.0.1", "127.0.0.1", "127.0.0.2"):
                assert (await handshake(stack, source, node.client_port)).status == 101
            full = await handshake(stack, "127.0.0.3", node.client_port)
            assert full.status == 503 and full.headers["retry-after"] == "60"
            assert full.body == b"connection limit: the node holds as many connections as it takes (3); retry later\n"
        assert refused(node, "client", "node") == 1
        gauge = node.ctx.metrics.render().decode()
        assert "vim_client_connections_open " in gauge and "vim_client_connections_unauthenticated " in gauge


async def test_the_http_port_caps_the_connections_of_an_address(start_node) -> None:
    with trio.fail_after(30):
        node = await start_node(websocket={"max-unauthenticated-per-address": 1, **COUNTED},
                                extra={"http": {"port": free_port()}})
        assert node.http_port
        async with contextlib.AsyncExitStack() as stack:
            slow = await stack.enter_async_context(await tcp_from("127.0.0.2", node.http_port))
            await slow.send_all(b"GET /healthz HTTP/1.1\r\n")  # and the rest never
            await trio.testing.wait_all_tasks_blocked()  # the node accepted it (this process's)
            over = await stack.enter_async_context(await tcp_from("127.0.0.2", node.http_port))
            await over.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = await read_answer(over)
            assert answer.status == 429 and answer.headers["retry-after"] == "10"
            assert answer.headers["x-content-type-options"] == "nosniff"  # as every answer of the port
            assert answer.body.startswith(b"connection limit: too many unauthenticated connections")
            other = await stack.enter_async_context(await tcp_from("127.0.0.1", node.http_port))
            await other.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await read_answer(other)).status == 200
        assert refused(node, "http", "pending") == 1


async def test_the_forward_port_caps_only_connections_not_yet_authenticated(start_node) -> None:
    with trio.fail_after(30):
        master = await start_node(node_id="m", websocket={"max-unauthenticated-per-address": 1, **COUNTED})
        slave = await start_node(node_id="s", node_type="slave",
                                 master_url=f"ws://127.0.0.1:{master.forward_port}/forward")
        while not (slave.ctx.delivery.cluster.healthy() and master.ctx.delivery.cluster.warm.is_set()):
            await trio.sleep(0.05)
        assert master.forward_port
        async with contextlib.AsyncExitStack() as stack:
            # The slave's link from 127.0.0.1 authenticated: it leaves that address's one slot free.
            assert (await handshake(stack, "127.0.0.1", master.forward_port, b"/forward")).status == 101
            over = await handshake(stack, "127.0.0.1", master.forward_port, b"/forward")
            assert over.status == 429
        assert slave.ctx.delivery.cluster.healthy()
        assert refused(master, "forward", "pending") == 1
