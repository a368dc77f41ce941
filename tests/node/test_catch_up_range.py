"""What a node's catch-up (node/catch_up.py) re-delivers to a session: the messages stored
since its link went down, not every unconfirmed one its user ever got."""

from __future__ import annotations

import contextlib

import trio

from vim_cluster.node.catch_up import deliver_since

from ..support import Collector, connect, online


async def test_a_catch_up_re_delivers_friend_messages_since_its_start_not_every_unconfirmed_one(url, node) -> None:
    # bob reads everything and confirms nothing (his offline set keeps every message). Before,
    # each catch-up (every link-up of his node) sent him all of them again: with more than
    # his send queue holds, he was closed 4004 at every master restart or link flap.
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            alice = await online(stack, url, "alice")
            async with connect(url) as first:
                await first.register_login("bob")
            bob_id = first.user_id
            assert bob_id is not None
            bob = await online(stack, url, "bob", register=False)
            at_bob = Collector(bob)
            nursery.start_soon(at_bob.run)
            old = [(await alice.chat(bob_id, f"old {i}", f"old-{i}"))["id"] for i in range(5)]
            assert await at_bob.wait_for(old, 10)
            await alice.chat(bob_id, "boundary", "boundary")
            since = node.ctx.clock_ms()  # after the boundary's timestamp
            while node.ctx.clock_ms() <= since:  # the next message is minted after `since`
                await trio.sleep(0.001)
            new = (await alice.chat(bob_id, "new", "new"))["id"]
            assert await at_bob.wait_for([new], 10)
            assert await deliver_since(node.ctx, since) == 1  # `new` only (alice is sent none of her own)
            at_bob.stop()
