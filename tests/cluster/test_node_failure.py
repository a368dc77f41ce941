"""A slave killed with SIGKILL while messages flow to its user: nothing acked is lost.

The recipient's node dies mid-stream; the sender (on another node) keeps sending; the
recipient reconnects to another node and gets every acked message, by offline replay and then
live, exactly once after dropping duplicates by id, in the order they were acked.
"""

from __future__ import annotations

import trio

from ..support import Collector, connect
from .harness import Cluster, alice_on_dept1, blocking, steady_to_dept2


async def test_recipient_of_a_killed_slave_gets_every_acked_message_on_another_node(cluster: Cluster) -> None:
    with trio.fail_after(60):
        async with alice_on_dept1(cluster) as (stack, nursery, alice, tag):
            before, sender = await steady_to_dept2(stack, nursery, cluster, alice, tag, 20)  # traffic flows to bob
            acks = sender.acks

            await blocking(cluster.dept2.kill)  # SIGKILL, while alice keeps sending
            killed_at = len(acks)
            await before.wait_closed(10)
            await sender.wait_acked(killed_at + 20)  # alice sends on while bob is offline

            moved = await stack.enter_async_context(connect(cluster.master.url))  # another node
            await moved.login(f"bob-{tag}")
            replayed = await moved.ready()
            assert all(m["offline"] is True for m in replayed)
            after = Collector(moved)
            nursery.start_soon(after.run)
            sent_before_live = len(acks)
            await sender.wait_acked(sent_before_live + 30)  # and on, while bob is on the master
            await sender.stop()

            acked = [a["id"] for a in acks]
            assert len(set(acked)) == len(acked)
            already = set(before.order) | {m["id"] for m in replayed}
            await after.wait_for([i for i in acked if i not in already], 15)  # checked below, with details
            seen: list[str] = []
            for message_id in [*before.order, *[m["id"] for m in replayed], *after.order]:
                if message_id not in seen:
                    seen.append(message_id)
            lost = [a["cid"] for a in acks if a["id"] not in seen]
            assert not lost, (f"{len(lost)} of {len(acks)} acked messages never reached bob: {lost[:10]}... "
                              f"(killed after {killed_at} acks; {len(before.order)} arrived before, "
                              f"{len(replayed)} replayed, {len(after.order)} live after)")
            assert set(seen) == set(acked), "bob got messages nobody acked"
            assert seen == acked, "after dropping duplicates, not in the order they were acked"
            assert killed_at < sent_before_live < len(acks)
            nursery.cancel_scope.cancel()
