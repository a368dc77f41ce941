"""What the attacks share: a bystander who measures the cluster while an attack runs, a raw
WebSocket client for frames a well-behaved library refuses to send, and connections from other
loopback source addresses (127.0.0.0/8 is all loopback on Linux: one machine, many "hosts").
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import trio
from trio_websocket import wrap_client_stream
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, RejectConnection, Request

from ..cluster.harness import Cluster, ClusterNode, blocking
from ..support import Client, online, tcp_from

# The worst ping round trip another user may see while an attack runs. Generous for a loaded
# 2-core machine; a node that stalls (a blocked event loop, a crash, a restart) misses it.
LATENCY_BOUND_S = 2.0
PING_EVERY_S = 0.05
_names = itertools.count(1)


def name(prefix: str) -> str:
    """A username no other test uses (3..32 characters)."""
    return f"{prefix[:16]}{next(_names)}x{secrets.token_hex(3)}"


class Bystander:
    """Another user on the attacked node: pings it every PING_EVERY_S, records the worst round
    trip and how many pings were answered."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.worst = 0.0
        self.answered = 0
        self._pong = trio.Event()

    async def run(self) -> None:
        for n in itertools.count():
            started = trio.current_time()
            await self.client.send("ping", rid=f"watch-{n}")
            while (await self.client.expect("pong", timeout=LATENCY_BOUND_S * 5)).get("rid") != f"watch-{n}":
                pass
            self.worst = max(self.worst, trio.current_time() - started)
            self.answered += 1
            self._pong.set()
            self._pong = trio.Event()
            await trio.sleep(PING_EVERY_S)  # the bystander's pace, not a wait

    async def answered_again(self, times: int) -> None:
        """Until `times` more pings (sent from now on) were answered."""
        wanted = self.answered + times + 1  # the ping in flight may have been sent before
        with trio.fail_after(LATENCY_BOUND_S * (times + 1)):
            while self.answered < wanted:
                await self._pong.wait()


@contextlib.asynccontextmanager
async def watch(cluster: Cluster, node: ClusterNode) -> AsyncIterator[Bystander]:
    """Runs a Bystander on `node` during the block; then asserts that its latency stayed
    under LATENCY_BOUND_S, that it was answered throughout, and that every node is healthy."""
    async with contextlib.AsyncExitStack() as stack:
        bystander = Bystander(await online(stack, node.url, name("bystander")))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bystander.run)
            yield bystander
            await bystander.answered_again(1)  # one more round trip after the attack
            nursery.cancel_scope.cancel()
    assert bystander.answered >= 2, "the bystander was never answered"
    assert bystander.worst < LATENCY_BOUND_S, f"a bystander's ping took {bystander.worst:.2f} s"
    await assert_healthy(cluster)


async def assert_healthy(cluster: Cluster) -> None:
    cluster.check_running()
    for node in cluster.nodes.values():
        status, body = await blocking(node.healthz)
        assert status == 200, (node.name, body)


def rss_kib(pid: int) -> int:
    """Resident memory of a process (Linux /proc), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def connect_from(source: str, node: ClusterNode, resource: str = "/") -> AsyncIterator[Client]:
    """A protocol Client whose connection comes from `source`."""
    async with trio.open_nursery() as nursery:
        stream = await tcp_from(source, node.port)
        ws = await wrap_client_stream(nursery, stream, "127.0.0.1", resource)
        try:
            yield Client(ws)
        finally:
            await ws.aclose()
            await trio.aclose_forcefully(stream)  # see support.connect: trio-websocket may not


def frame_bytes(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame on the wire: header, mask, masked payload."""
    mask = os.urandom(4)
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        header = bytes([first, 0x80 | size])
    elif size < 1 << 16:
        header = bytes([first, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([first, 0x80 | 127]) + size.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawSocket:
    """A WebSocket client that sends whatever bytes it is told (wsproto for the handshake only)."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws

    @classmethod
    async def open(cls, port: int, target: str = "/") -> RawSocket:
        return await cls.handshake(await trio.open_tcp_stream("127.0.0.1", port), target)

    @classmethod
    async def handshake(cls, stream: trio.SocketStream, target: str = "/") -> RawSocket:
        """The WebSocket handshake on a TCP connection to a node's client port."""
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host="127.0.0.1", target=target)))
        raw = cls(stream, ws)
        event = await raw.next_event()
        if not isinstance(event, AcceptConnection):
            raise AssertionError(f"handshake refused: {event}")
        return raw

    async def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        """One frame (final unless `fin` is False), masked as a client must, with any payload
        (even invalid)."""
        await self.stream.send_all(frame_bytes(opcode, payload, fin))

    async def next_event(self) -> Any:
        """The next wsproto event from the node; None when the TCP connection ended."""
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.ws.receive_data(data)

    async def close_frame(self) -> CloseConnection | None:
        """Reads until the node's close frame (returned) or the end of the TCP stream (None)."""
        while True:
            event = await self.next_event()
            if event is None or isinstance(event, CloseConnection):
                return event

    async def aclose(self) -> None:
        await self.stream.aclose()


async def handshake_status(port: int, target: str) -> int:
    """The HTTP status a WebSocket handshake to `target` gets (101 when accepted)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host="127.0.0.1", target=target)))
        raw = RawSocket(stream, ws)
        event = await raw.next_event()
        if isinstance(event, AcceptConnection):
            return 101
        assert isinstance(event, RejectConnection), event
        return int(event.status_code)
    finally:
        await stream.aclose()
