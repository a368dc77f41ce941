"""A catch-up (node/catch_up.py) of more messages than a session's send queue holds: it waits
for room in that queue, so a client that reads promptly gets every one and stays connected;
one that stopped reading is still closed 4004 (at its idle timeout) and the catch-up goes on."""

from __future__ import annotations

import contextlib

import trio
import trio.testing
from structlog.testing import capture_logs

from vim_cluster.errors import CloseCode
from vim_cluster.node.catch_up import deliver_since

from ..support import Client, Collector, connect, online

QUEUE = 16  # vim.websocket.send-queue-frames here
BIG = 400_000  # characters a message: a few dozen fill the loopback socket buffers


async def alice_and_reading_bob(stack: contextlib.AsyncExitStack, nursery: trio.Nursery,
                                url: str) -> tuple[Client, Client, Collector]:
    """alice and bob online (closed with `stack`), and a Collector reading bob's frames."""
    alice = await online(stack, url, "alice")
    bob = await online(stack, url, "bob")
    at_bob = Collector(bob)
    nursery.start_soon(at_bob.run)
    return alice, bob, at_bob


async def test_a_catch_up_of_several_send_queues_of_messages_keeps_a_client_that_reads(start_node) -> None:
    # 6 queues' worth in one page: before, the catch-up pushed a page within one scheduler
    # pass, and bob, reading all the time, was closed 4004 at the 17th frame (after a master
    # outage: 5,850 messages, closed after 500, and a wave of reconnects).
    node = await start_node(websocket={"send-queue-frames": QUEUE})
    url = f"ws://127.0.0.1:{node.client_port}/"
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            alice, bob, at_bob = await alice_and_reading_bob(stack, nursery, url)
            assert bob.user_id is not None
            since = node.ctx.clock_ms()
            sent = [(await alice.chat(bob.user_id, f"m {i}", f"m-{i}"))["id"] for i in range(6 * QUEUE)]
            assert await at_bob.wait_for(sent, 10)
            (session,) = node.ctx.local_sessions.sessions(int(bob.user_id))
            assert await deliver_since(node.ctx, since) == len(sent)
            assert session.close_code is None and not at_bob.closed
            at_bob.stop()
            await bob.barrier()  # every frame queued before it is read
            again = [m["message"]["id"] for m in bob.backlog if m["code"] == "message"]
            assert at_bob.order == sent and at_bob.frames + len(again) == 2 * len(sent)  # every copy
            assert again == sent[len(sent) - len(again):]  # the catch-up's, in order
            assert session.close_code is None


async def test_a_catch_up_closes_a_client_that_stopped_reading_4004_at_its_idle_timeout_and_goes_on(
        start_node) -> None:
    # bob stops reading; dave, whose catch-up comes after bob's (his session opened later),
    # reads: he gets his while the catch-up waits for room in bob's queue, which it does for
    # the idle timeout, then closes him 4004. Before the users' catch-ups ran side by side,
    # dave's waited for bob's timeout.
    node = await start_node(websocket={"max-content": 2 * BIG, "max-frame": 4 * BIG, "send-queue-frames": 4,
                                       "idle-timeout": 3, "rate-limit": 1_000_000})
    url = f"ws://127.0.0.1:{node.client_port}/"
    with trio.fail_after(90), capture_logs() as logs:
        async with contextlib.AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            alice, bob, at_bob = await alice_and_reading_bob(stack, nursery, url)
            assert bob.user_id is not None
            since = node.ctx.clock_ms()
            sent = []
            for i in range(60):  # each once bob has the one before (his client reads them slowly)
                sent.append((await alice.chat(bob.user_id, f"{i:03d}" + "x" * BIG, f"big-{i}"))["id"])
                assert await at_bob.wait_for(sent, 10)
            dave = await online(stack, url, "dave")  # now: he would end idle meanwhile
            assert dave.user_id is not None
            at_dave = Collector(dave)
            nursery.start_soon(at_dave.run)
            to_dave = [(await alice.chat(dave.user_id, f"d {i}", f"d-{i}"))["id"] for i in range(10 * 4)]
            assert await at_dave.wait_for(to_dave, 10)
            at_bob.stop()
            await bob.barrier()  # bob was heard from just now; from here on he reads nothing
            (session,) = node.ctx.local_sessions.sessions(int(bob.user_id))
            queue = session.send_queue
            done = trio.Event()

            async def catch_up() -> None:
                await deliver_since(node.ctx, since)
                done.set()

            nursery.start_soon(catch_up)
            while len(queue) < queue.limit // 2:  # the catch-up filled bob's socket and half his queue (spare)
                assert not done.is_set()
                await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()  # its last wait for room began: nothing moves
            # A frame from bob after it keeps his connection from ending idle (1001) first. (Sent
            # while the catch-up still got room now and then, his idle timeout came first: his
            # close, queued, ends the catch-up at once since a close wakes what waits for room;
            # before, the catch-up waited on and turned the idle close into a 4004.)
            await bob.send("ping", rid="keep")
            started = trio.current_time()
            assert await at_dave.wait_frames(2 * len(to_dave), 10)  # dave has his catch-up ...
            assert session.close_code is None and not done.is_set()  # ... while bob's still waits
            assert not at_dave.closed
            await done.wait()  # the catch-up did not wait for bob for ever
            assert 2 < trio.current_time() - started < 3 + 2  # its wait: the idle timeout (3 s)
            assert session.close_code is CloseCode.SLOW_CONSUMER
            assert (await bob.expect_closed(timeout=30)).code == int(CloseCode.SLOW_CONSUMER)
            async with connect(url) as back:  # nothing was lost: his replay has every message
                await back.login("bob")
                replayed = await back.ready()
            assert [m["id"] for m in replayed] == sent
    closed = [entry for entry in logs if entry["event"] == "slow_consumer_closed"]
    assert len(closed) == 1
