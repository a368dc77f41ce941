"""Attacks on the master's forward port (the channel between nodes): impersonating a slave or
an operator without the secret, replaying a recorded handshake, and flooding it with big
frames before authenticating."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator

import msgpack
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from vim_cluster.protocol import forward_frames as ff
from vim_cluster.protocol.forward_connection import PRE_AUTH_MAX_FRAME

from ..cluster.harness import Cluster, blocking, http_get
from ..support import connect, online
from .attack import name, rss_kib, watch


@contextlib.asynccontextmanager
async def forward(cluster: Cluster) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket to the master's forward port (closed cleanly however the master ends it)."""
    async with connect(cluster.forward_url) as client:
        yield client.ws


WRONG_SECRET = b"0123456789abcdef0123456789abcdef-not-the-cluster-secret"


async def _closed(ws: WebSocketConnection, timeout: float = 5.0) -> tuple[list[object], int | None]:
    """Frames the master sent until it closed (decoded) and the close code."""
    frames: list[object] = []
    with trio.fail_after(timeout):
        while True:
            try:
                frames.append(ff.decode_frame(await ws.get_message())[1])
            except ConnectionClosed as exc:
                return frames, exc.reason.code if exc.reason else None


async def _hello(ws: WebSocketConnection, node: str, nonce: str, role: ff.PeerRole = ff.PeerRole.SLAVE) -> ff.Challenge:
    await ws.send_message(ff.encode_frame(ff.Hello(node, role, secrets.token_hex(8), nonce), 0))
    _, challenge = ff.decode_frame(await ws.get_message())
    assert isinstance(challenge, ff.Challenge), challenge
    return challenge


async def test_a_peer_without_the_secret_is_refused_as_slave_and_as_operator(cluster: Cluster) -> None:
    """Attack: connect to the forward port as a slave (a fresh node id, and the id of the live
    dept-1) and as an operator tool, proving with a MAC made from a wrong secret, then ask the
    master to kick a user. Defended: every attempt gets `refused` and close 1008, no packet is
    acted on (the victim's session stays), and dept-1's real link stays up."""
    with trio.fail_after(30):
        async with watch(cluster, cluster.dept1), contextlib.AsyncExitStack() as stack:
            victim = await online(stack, cluster.dept2.url, name("kickme"))
            for node, role in [("evil-node", ff.PeerRole.SLAVE), ("dept-1", ff.PeerRole.SLAVE),
                               ("evil-op", ff.PeerRole.OPERATOR)]:
                async with forward(cluster) as ws:
                    nonce = secrets.token_hex(16)
                    challenge = await _hello(ws, node, nonce, role)
                    mac = ff.slave_mac(WRONG_SECRET, node, nonce, challenge.nonce)
                    await ws.send_message(ff.encode_frame(ff.Auth(mac, 0, 0), 0))
                    kick = ff.Kick("dept-2", int(victim.user_id or 0), None, 4001, None)
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send_message(ff.encode_frame(ff.Sessions([]), 0))
                        await ws.send_message(ff.encode_frame(ff.Batch(None, 1, [kick]), 0))
                    frames, code = await _closed(ws)
                    assert code == 1008, (node, frames, code)
                    assert any(isinstance(f, ff.Refused) for f in frames), frames
            await victim.send("ping", rid="still-here")
            assert (await victim.expect("pong"))["rid"] == "still-here"


async def _master_lease(cluster: Cluster) -> dict[str, object]:
    status, body = await blocking(http_get, f"http://127.0.0.1:{cluster.master.http_port}/dashboard.json")
    assert status == 200, body
    master = json.loads(body)["master"]
    return {key: master[key] for key in ("node", "epoch", "since", "takeovers")}


async def test_an_outsiders_newer_epoch_does_not_unseat_the_master(cluster: Cluster) -> None:
    """Attack: without the secret, say hello with fencing epoch 10**18 (and then an auth with a
    wrong MAC at that epoch). The master used to believe a newer master existed: it stepped
    down, closed its forward port and took its lease again at epoch 10**18 + 1, so that every
    such frame cut cross-node delivery for seconds, and one near 2**63 left no epoch to take.
    Defended: an epoch counts only from a peer that proved the secret; the master keeps its
    lease, its epoch and its links."""
    with trio.fail_after(30):
        before = await _master_lease(cluster)
        async with watch(cluster, cluster.dept1):
            for auth in (False, True):
                async with forward(cluster) as ws:
                    nonce = secrets.token_hex(16)
                    await ws.send_message(ff.encode_frame(ff.Hello("evil-node", ff.PeerRole.SLAVE, "i", nonce), 10**18))
                    epoch, challenge = ff.decode_frame(await ws.get_message())
                    assert isinstance(challenge, ff.Challenge) and epoch == before["epoch"], (epoch, challenge)
                    if auth:
                        mac = ff.slave_mac(WRONG_SECRET, "evil-node", nonce, challenge.nonce)
                        await ws.send_message(ff.encode_frame(ff.Auth(mac, 0, 0), 10**18))
                        frames, code = await _closed(ws)
                        assert code == 1008 and any(isinstance(f, ff.Refused) for f in frames), (frames, code)
        assert await _master_lease(cluster) == before
        assert b"master_stepped_down" not in cluster.master.process.log.read_bytes()


async def test_a_web_page_cannot_open_the_forward_port(cluster: Cluster) -> None:
    """Attack: a page of any site, opened by an operator whose host may reach the forward port,
    opens a WebSocket to it from the operator's browser (past the firewall). Defended: a
    handshake with an Origin (only browsers send one) is refused with 403; nodes and
    operator tools send none."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", cluster.master.forward_port or 0)
        async with stream:
            await stream.send_all(
                b"GET /forward HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Origin: https://evil.example\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n")
            answer = await stream.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 403 "), answer
        async with forward(cluster) as ws:  # a tool (no Origin) still gets its challenge
            await _hello(ws, "evil-node", secrets.token_hex(16))


async def test_a_recorded_handshake_cannot_be_replayed(cluster: Cluster, secret: bytes) -> None:
    """Attack: replay a genuine slave handshake recorded off the wire (a valid hello and auth
    MAC for one pair of nonces) on a new connection; and reflect the master's own challenge
    MAC back as the slave's proof. Defended: the master draws a fresh nonce per connection,
    so the recorded MAC does not match it and the reflected one is for the other direction:
    both are refused with 1008."""
    with trio.fail_after(30):
        async with watch(cluster, cluster.dept2):
            nonce = secrets.token_hex(16)
            async with forward(cluster) as ws:  # the recording
                recorded = await _hello(ws, "evil-replay", nonce)
            recorded_mac = ff.slave_mac(secret, "evil-replay", nonce, recorded.nonce)
            async with forward(cluster) as ws:  # the replay
                challenge = await _hello(ws, "evil-replay", nonce)
                assert challenge.nonce != recorded.nonce
                await ws.send_message(ff.encode_frame(ff.Auth(recorded_mac, 0, 0), 0))
                frames, code = await _closed(ws)
                assert code == 1008 and any(isinstance(f, ff.Refused) for f in frames), (frames, code)
            async with forward(cluster) as ws:  # the reflection
                challenge = await _hello(ws, "evil-reflect", nonce)
                await ws.send_message(ff.encode_frame(ff.Auth(challenge.mac, 0, 0), 0))
                frames, code = await _closed(ws)
                assert code == 1008 and any(isinstance(f, ff.Refused) for f in frames), (frames, code)


async def test_big_frames_before_authentication_are_cut_off_without_buffering(cluster: Cluster) -> None:
    """Attack: open 20 connections to the forward port and send 1 MiB frames as a hello (and,
    after a valid hello, as the auth) without knowing the secret: before the fix five 16 MiB
    frames took the master from 96 to 210 MiB. Defended: a frame over PRE_AUTH_MAX_FRAME
    (4 KiB) before the auth MAC checked out closes its connection with 1009, and the master's
    memory grows by less than 16 MiB over the whole attack."""
    big = b"\x00" * (1 << 20)
    with trio.fail_after(30):
        async with watch(cluster, cluster.master):
            before = rss_kib(cluster.master.pid)  # after the bystander's login (argon2: 19 MiB)
            async def one(n: int) -> None:
                async with forward(cluster) as ws:
                    if n % 2:
                        await _hello(ws, f"evil-{n}", secrets.token_hex(16))
                    with contextlib.suppress(ConnectionClosed):
                        for _ in range(4):
                            await ws.send_message(big)
                    _, code = await _closed(ws)
                    assert code == 1009, code

            async with trio.open_nursery() as nursery:
                for n in range(20):
                    nursery.start_soon(one, n)
            async with forward(cluster) as ws:  # just under the cap: read
                await ws.send_message(msgpack.packb([0, 0, "x" * (PRE_AUTH_MAX_FRAME - 64)]))
                _, code = await _closed(ws)
                assert code != 1009
            grown_mib = (rss_kib(cluster.master.pid) - before) / 1024
    print(f"master RSS grew by {grown_mib:.1f} MiB during the oversize attack")
    assert grown_mib < 16


async def test_garbage_on_the_forward_port_is_dropped(cluster: Cluster) -> None:
    """Attack: text frames, non-MessagePack bytes, a MessagePack bomb (a map header announcing
    2^32 entries, 10,000 nested arrays) and packets before any hello on the forward port.
    Defended: each connection is dropped, the master logs it and keeps serving."""
    with trio.fail_after(30):
        async with watch(cluster, cluster.master):
            payloads: list[str | bytes] = [
                "hello", b"\xc1\xc1\xc1", b"\xdf\xff\xff\xff\xff", b"\x91" * 3000 + b"\x00",
                ff.encode_frame(ff.Batch(0, 1, [ff.SessionClose(1, "s")]), 0),
                ff.encode_frame(ff.Welcome(0), 0)]
            for payload in payloads:
                async with forward(cluster) as ws:
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send_message(payload)
                    await _closed(ws, timeout=15)
