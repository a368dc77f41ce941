"""What a node's catch-up (node/catch_up.py) re-delivers to a session: the messages stored
since its link went down, not every unconfirmed one its user ever got."""

from __future__ import annotations

import contextlib

import trio

from vim_cluster.ids import MAX_WORKER, IdGenerator
from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId
from vim_cluster.node.catch_up import deliver_since
from vim_cluster.ports import NewMessage

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


async def test_a_catch_up_gives_a_senders_devices_here_what_it_sent_from_elsewhere_not_what_it_sent_here(
    url, node
) -> None:
    """PROTOCOL.md: the sender's other sessions get the same frame. A message alice sent from a
    device on another node (minted there), whose packet the catch-up stands for, reaches her
    devices here; what she sent here (minted by this process) went to them then, and is not
    sent back."""
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            bob = await online(stack, url, "bob-2")
            alice = await online(stack, url, "alice-2", client="pc")
            assert alice.user_id is not None and bob.user_id is not None
            alice_id, bob_id = UserId(int(alice.user_id)), UserId(int(bob.user_id))
            since = node.ctx.clock_ms()
            here = (await alice.chat(bob.user_id, "sent here", "here"))["id"]
            elsewhere = Message(MessageId(IdGenerator(MAX_WORKER, node.ctx.clock_ms).next_id()), "elsewhere",
                                alice_id, bob_id, ChatType.FRIEND, MessageType.TEXT,
                                "sent from a device on another node", None, node.ctx.clock_ms())
            at_alice = Collector(alice)  # after her ack
            nursery.start_soon(at_alice.run)
            assert not node.ctx.ids.minted_here(elsewhere.id) and node.ctx.ids.minted_here(int(here))
            await node.ctx.store(node.ctx.messages.save_messages, [NewMessage(elsewhere, (bob_id,))])
            assert await deliver_since(node.ctx, since) == 3  # bob: both; alice: the one from elsewhere
            assert await at_alice.wait_for([str(elsewhere.id)], 10)
            assert here not in at_alice.arrived
            at_alice.stop()
