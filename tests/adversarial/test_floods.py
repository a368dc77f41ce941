"""Resource exhaustion: many connections, connections that never finish (slowloris, half-open,
never authenticating), frame floods and a consumer that stops reading while it is flooded."""

from __future__ import annotations

import contextlib
import itertools

import trio
from trio_websocket import ConnectionClosed
from wsproto.events import TextMessage

from ..cluster.harness import Cluster, ClusterNode, blocking
from ..support import Client, connect, online
from .attack import RawSocket, frame_bytes, name, rss_kib, watch

HANDSHAKE_DEADLINE_S = 10.0  # the client and forward listeners' connect timeout, the auth timeout
SLACK_S = 3.5


async def _until_closed(stream: trio.SocketStream, trickle: bytes = b"") -> float:
    """Sends `trickle` one byte every 0.5 s (or nothing) until the node closes the TCP
    connection; returns when that happened (trio.current_time())."""
    async def read_to_end() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some(65536):
                pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_to_end)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for byte in trickle:
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.5)  # the trickle's pace is the attack under test
    await stream.aclose()
    return trio.current_time()


async def test_slowloris_half_open_and_silent_connections_are_closed_at_their_deadline(cluster: Cluster) -> None:
    """Attack: on the client and forward ports at once: 40 TCP connections that send nothing,
    20 that trickle the WebSocket upgrade one byte each 0.5 s, 40 WebSockets that never
    authenticate, 20 forward-port WebSockets that never say hello. Defended: each is closed
    by the node within its 10 s deadline (the never-authenticating clients with 4003), while
    another user's pings on that node stay fast."""
    node = cluster.master
    upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" * 3
    ends: list[float] = []
    codes: list[int | None] = []
    with trio.fail_after(HANDSHAKE_DEADLINE_S + 20):
        async with watch(cluster, node):
            started = trio.current_time()

            async def raw(port: int, trickle: bytes = b"") -> None:
                ends.append(await _until_closed(await trio.open_tcp_stream("127.0.0.1", port), trickle))

            async def silent(url: str) -> None:
                async with connect(url) as client:
                    with contextlib.suppress(ConnectionClosed):
                        while True:
                            await client.ws.get_message()
                    reason = client.ws.closed
                    codes.append(reason.code if reason else None)
                    ends.append(trio.current_time())

            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(raw, node.port)
                    nursery.start_soon(silent, node.url)
                for _ in range(20):
                    nursery.start_soon(raw, node.port, upgrade)
                    nursery.start_soon(silent, cluster.forward_url)
            longest = max(ends) - started
    print(f"slowloris: {len(ends)} connections closed by the node, the last after {longest:.1f} s")
    assert len(ends) == 120
    assert longest < HANDSHAKE_DEADLINE_S + SLACK_S
    assert codes.count(4003) == 40  # the clients that never authenticated


async def test_a_connection_flood_is_served_and_leaves_nothing_behind(cluster: Cluster) -> None:
    """Attack: open 300 WebSocket connections to one node at once, each sending a burst of
    pings, then drop them all without a close handshake. Defended: every one is served,
    another user on that node stays fast, and the node's connection count returns to what it
    was."""
    node = cluster.dept2
    with trio.fail_after(40):
        async with watch(cluster, node):
            async def flood() -> None:
                raw = await RawSocket.open(node.port)
                try:
                    for n in range(5):
                        await raw.send_frame(0x1, b'{"code":"ping","message":{"rid":"%d"}}' % n)
                    assert isinstance(await raw.next_event(), TextMessage)
                finally:
                    await raw.aclose()  # no close handshake: the TCP connection just ends

            async with trio.open_nursery() as nursery:
                for _ in range(300):
                    nursery.start_soon(flood)
        await _wait_connections(node, at_most=0)


async def _wait_connections(node: ClusterNode, at_most: int) -> None:
    """Waits until the node's /healthz reports at most `at_most` connections."""
    with trio.fail_after(15):
        while True:
            _, body = await blocking(node.healthz)
            if body.get("connections", 0) <= at_most:
                return
            await trio.sleep(0.1)  # polls another process's /healthz


async def test_a_frame_flood_is_rate_limited_on_its_own_connection(cluster: Cluster) -> None:
    """Attack: one authenticated connection sends 1,500 frames as fast as it can. Defended:
    frames beyond the rate limit (200/s) are answered `rate-limited` and not processed, the
    connection stays open, and another user on the node stays fast."""
    with trio.fail_after(30):
        async with watch(cluster, cluster.dept1), contextlib.AsyncExitStack() as stack:
            flooder = await online(stack, cluster.dept1.url, name("flood"))
            for n in range(1500):
                await flooder.send("ping", rid=str(n))
            kinds = {"pong": 0, "rate-limited": 0}
            while kinds["pong"] + kinds["rate-limited"] < 1500:
                frame = await flooder.next_frame()
                kind = frame["message"]["error"] if frame["code"] == "error" else frame["code"]
                kinds[kind] += 1
            assert kinds["rate-limited"] > 0 and kinds["pong"] >= 150, kinds
            await _answered_again(flooder, within=3.0)  # in the next rate window (1 s)


async def _answered_again(client: Client, within: float) -> None:
    """Pings until one is answered `pong` (the others `rate-limited`); fails after `within` s."""
    with trio.fail_after(within):
        for n in itertools.count():
            await client.send("ping", rid=f"again-{n}")
            frame = await client.next_frame()
            if frame["code"] == "pong":
                assert frame["message"]["rid"] == f"again-{n}", frame
                return
            assert frame["message"]["error"] == "rate-limited", frame
            await trio.sleep(0.1)  # one ping a tenth of a second: well under the limit


async def test_a_websocket_ping_flood_that_reads_no_pongs_only_stalls_itself(cluster: Cluster) -> None:
    """Attack: 30,000 WebSocket-level ping frames (opcode 9, answered by the WebSocket layer
    below the rate limit) on one connection that never reads the pongs. Defended: once the
    unread pongs fill the socket, the node stops reading that connection (backpressure): its
    memory does not grow and another user on the node stays fast."""
    node = cluster.master
    with trio.fail_after(30):
        async with watch(cluster, node):
            before = rss_kib(node.pid)
            raw = await RawSocket.open(node.port)
            try:
                burst = frame_bytes(0x9, b"p" * 125) * 1000
                with trio.move_on_after(3), contextlib.suppress(trio.BrokenResourceError):
                    for _ in range(30):
                        await raw.stream.send_all(burst)
            finally:
                await raw.aclose()
            grown_mib = (rss_kib(node.pid) - before) / 1024
    print(f"ping flood: {node.name} RSS grew {grown_mib:.1f} MiB")
    assert grown_mib < 8


async def test_a_recipient_that_stops_reading_is_cut_off_before_it_costs_much_memory(cluster: Cluster) -> None:
    """Attack: a user on dept-1 stops reading while her own second account on the master
    sends her messages of 16 KiB content plus 16 KiB extend as fast as it may (a slow
    consumer used to make the node hold up to 1,024 queued frames, 32 MiB, per connection).
    Defended: dept-1 closes the reader with 4004 once 4 MiB wait for her in her send queue and
    4 MiB more in her backlog behind it (node/local_sessions.py), its memory grows by
    well under that 32 MiB, another user on dept-1 stays fast, and every message is kept for
    her offline replay."""
    node = cluster.dept1
    with trio.fail_after(50):
        async with watch(cluster, node), contextlib.AsyncExitStack() as stack:
            sink = await online(stack, node.url, name("sink"))  # reads nothing from here on
            pump = await online(stack, cluster.master.url, name("pump"))
            before = rss_kib(node.pid)
            sent: list[str] = []
            message = {"chatId": sink.user_id, "type": "friend", "messageType": "text",
                       "content": "c" * 16_000, "extend": {"pad": "e" * 16_000}}
            while not _cut_off(node, sink) and len(sent) < 1000:
                for n in range(40):
                    await pump.send("message", cid=f"p-{len(sent)}-{n}", **message)
                for _ in range(40):
                    sent.append((await pump.expect("ack"))["id"])
                await trio.sleep(0.2)  # the pump's pace: under the rate limit (200 frames/s), not a wait
            grown_mib = (rss_kib(node.pid) - before) / 1024
            print(f"slow consumer cut off after {len(sent)} messages; {node.name} RSS grew {grown_mib:.1f} MiB")
            assert _cut_off(node, sink), f"not cut off after {len(sent)} messages of 32 KB"
            assert (await sink.expect_closed(timeout=20)).code == 4004
            assert grown_mib < 24
            replayed = await _replayed(node, sink)
            assert set(sent) <= replayed


def _cut_off(node: ClusterNode, client: Client) -> bool:
    """The node decided that `client` is a slow consumer (it closes it then, within 10 s)."""
    return any("slow_consumer_closed" in line and str(client.user_id) in line
               for line in node.log_text().splitlines())


async def _replayed(node: ClusterNode, client: Client) -> set[str]:
    async with connect(node.url) as again:
        return {m["id"] for m in await again.ready(token=client.token)}
