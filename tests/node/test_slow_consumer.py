"""A session that reads nothing while frames pile up is a slow consumer: it is closed with
4004 and gets every message again by offline replay (PROTOCOL.md §2.3); the sender and the
node carry on."""

from __future__ import annotations

import contextlib

import trio

from vim_cluster.errors import CloseCode

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
