"""Delivers that reach a node outside any catch-up, many at once: dept-2, cut off from the
master (its link only), queues alice's messages to bob on dept-1, then links again and resends
them all; dept-1, linked all the time, runs no catch-up and gets them in a few forward frames
of up to 100 messages each. bob's send queue holds 16 frames here: he reads promptly, so he
must get every message, in order, and stay connected (before, each forward frame went into
his queue in one pass and he was closed 4004 at the 17th frame)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import pytest
import trio

from ..support import online
from .harness import DEPT1, DEPT2, Cluster, Collector, blocking

QUEUE = 16  # bob's vim.websocket.send-queue-frames
MESSAGES = 300  # sent while dept-2 is cut off: many queues' worth


@pytest.fixture(scope="module")
def small_queue_cluster(tmp_path_factory: pytest.TempPathFactory, cluster_redis_url: str) -> Iterator[Cluster]:
    """master, dept-1 (send queues of QUEUE frames), dept-2 through a proxy (its rate limit
    raised: alice sends MESSAGES in a few seconds)."""
    cluster = Cluster(tmp_path_factory.mktemp("resend"), cluster_redis_url, (DEPT2,), extra={
        DEPT1: {"websocket": {"send-queue-frames": QUEUE}},
        DEPT2: {"websocket": {"rate-limit": 100_000}},
    })
    cluster.start()  # stops what it started if it fails
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_a_resent_window_reaches_a_prompt_reader_whole_in_order_without_4004(
    small_queue_cluster: Cluster,
) -> None:
    cluster = small_queue_cluster
    cluster.check_running()
    proxy, dept1 = cluster.proxies[DEPT2], cluster.dept1
    tag = secrets.token_hex(3)
    with trio.fail_after(90):
        async with contextlib.AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            alice = await online(stack, cluster.dept2.url, f"alice-{tag}")
            bob = await online(stack, dept1.url, f"bob-{tag}")
            assert bob.user_id is not None
            at_bob = Collector(bob)
            nursery.start_soon(at_bob.run)
            log_from = len(dept1.log_text())
            await blocking(proxy.sever)
            try:
                await blocking(cluster.dept2.wait_health, 503, 5)
                sent = [(await alice.chat(bob.user_id, f"{tag} {i:04d}", f"r-{i}"))["id"] for i in range(MESSAGES)]
            finally:
                await blocking(proxy.restore)
            assert await at_bob.wait_for(sent, 45), \
                f"bob got {len(at_bob.order)} of {len(sent)} (closed: {at_bob.closed})\n{dept1.log_tail()}"
            assert at_bob.order == sent and not at_bob.closed
            assert "slow_consumer_closed" not in dept1.log_text()[log_from:]
            at_bob.stop()
