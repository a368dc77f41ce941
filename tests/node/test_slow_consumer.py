"""A session that reads nothing while frames pile up is a slow consumer: it is closed with
4004 and gets every message again by offline replay (PROTOCOL.md §2.3); the sender and the
node carry on."""

from __future__ import annotations

import contextlib
import json
import socket

import attrs
import trio
from structlog.testing import capture_logs

from vim_cluster.errors import CloseCode
from vim_cluster.tunables import DEFAULTS

from ..adversarial.attack import RawSocket
from ..support import connect, online

BIG = 400_000  # characters a message: a few dozen fill the loopback socket buffers


async def test_a_recipient_that_reads_nothing_is_closed_4004_and_loses_nothing(start_node) -> None:
    # vim.websocket.send-queue-frames: a configured limit takes effect (the default is 1024)
    node = await start_node(websocket={"max-content": 2 * BIG, "max-frame": 4 * BIG, "send-queue-frames": 4})
    url = f"ws://127.0.0.1:{node.client_port}/"
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")  # its client queues one frame, then stops reading
            assert bob.user_id is not None
            acks = [await alice.chat(bob.user_id, f"{i:03d}" + "x" * BIG, f"big-{i}") for i in range(60)]
            reason = await bob.expect_closed(timeout=30)
            assert reason.code == int(CloseCode.SLOW_CONSUMER)
            seen_live = {m["message"]["id"] for m in bob.backlog if m["code"] == "message"}
            assert len(seen_live) < len(acks)  # it really was cut off
            assert (await alice.chat(bob.user_id, "after", "after")) is not None  # the sender goes on
            async with connect(url) as again:
                await again.login("bob")
                replayed = await again.ready()
            assert [m["id"] for m in replayed] == [a["id"] for a in acks] + [replayed[-1]["id"]]
            assert replayed[-1]["content"] == "after"


async def _offline_backlog(url: str, count: int) -> tuple[str, list[str]]:
    """bob registered and away while alice sends him `count` big messages: (bob's id, their ids)."""
    async with connect(url) as alice, connect(url) as bob:
        await alice.register_login("alice")
        await alice.ready()
        await bob.register_login("bob")
        assert bob.user_id is not None
        acks = [await alice.chat(bob.user_id, f"{i:03d}" + "x" * (BIG // 2), f"away-{i}") for i in range(count)]
    return bob.user_id, [a["id"] for a in acks]


async def test_frames_held_for_a_replay_that_does_not_get_on_are_bounded_by_its_queue_bytes(start_node) -> None:
    # bob sends `ready` with more offline messages than his queue and socket take, and reads
    # nothing more: his replay waits for room, and what is sent to him meanwhile is held for
    # after it. Held past his queue's byte limit (1 MiB here), he is a slow consumer: before,
    # it was held for as long as the connection stayed open.
    node = await start_node(websocket={"max-content": 2 * BIG, "max-frame": 4 * BIG, "send-queue-frames": 4,
                                       "send-queue-bytes": 1 << 20})
    url = f"ws://127.0.0.1:{node.client_port}/"
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            bob_id, away = await _offline_backlog(url, 40)
            bob = await stack.enter_async_context(connect(url))
            await bob.login("bob")
            await bob.send("ready", token=bob.token)
            await bob.expect("ready-ok")  # then it reads nothing
            (session,) = node.ctx.local_sessions.sessions(int(bob_id))
            alice = await online(stack, url, "alice", register=False)
            live = []
            for i in range(6):  # frames of some 200 KB: the 6th is past 1 MiB
                assert session.close_code is None and len(session.holding or ()) == i
                live.append((await alice.chat(bob_id, f"live {i} " + "y" * (BIG // 2), f"live-{i}"))["id"])
            assert session.close_code is CloseCode.SLOW_CONSUMER and session.holding is None
            async with connect(url) as again:  # nothing was lost
                await again.login("bob")
                replayed = await again.ready()
            assert [m["id"] for m in replayed] == away + live


async def test_a_replay_whose_client_reads_nothing_ends_at_the_idle_timeout(start_node) -> None:
    # The same bob, and nobody sends him anything more: his replay waited for room for ever,
    # and his connection stayed open (its idle deadline is only on the wait for his frames).
    node = await start_node(websocket={"max-content": 2 * BIG, "max-frame": 4 * BIG, "send-queue-frames": 4,
                                       "idle-timeout": 1})
    url = f"ws://127.0.0.1:{node.client_port}/"
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            bob_id, _ = await _offline_backlog(url, 40)
            bob = await stack.enter_async_context(connect(url))
            await bob.login("bob")
            await bob.send("ready", token=bob.token)
            await bob.expect("ready-ok")  # then it reads nothing
            (session,) = node.ctx.local_sessions.sessions(int(bob_id))
            await node.ctx.local_sessions.wait_empty()  # its connection ended
            assert session.close_code is CloseCode.SLOW_CONSUMER


async def test_an_anonymous_client_that_sends_and_reads_nothing_is_closed_at_its_auth_deadline(start_node) -> None:
    # Pings, answered with `pong`s it never reads (its receive buffer kept small), until the
    # node's answers wait for room: the node stopped reading it for ever, past the time it
    # gives a client to authenticate (15 s here), and kept it open.
    tunables = attrs.evolve(DEFAULTS, client_auth_timeout_s=15.0, client_close_grace_s=1.0)
    node = await start_node(websocket={"send-queue-frames": 4, "rate-limit": 1_000_000}, tunables=tunables)
    ping = json.dumps({"code": "ping", "message": {"rid": "r" * 64}}).encode()
    with trio.fail_after(60), capture_logs() as logs:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", node.client_port))
        raw = await RawSocket.handshake(trio.SocketStream(sock))
        try:
            with contextlib.suppress(trio.BrokenResourceError):
                while True:  # until the node ends the connection, which fails these sends
                    await raw.send_frame(0x1, ping)
        finally:
            await raw.aclose()
    closed = [entry for entry in logs if entry["event"] == "slow_consumer_closed"]
    assert len(closed) == 1 and "session_id" not in closed[0]
