"""The forward link of a slave cut and restored under traffic (through a TCP proxy).

dept-2 reaches the master through `TcpProxy`; the test severs every proxied connection and
refuses new ones for ~2 s while a sender on dept-1 writes to a user on dept-2, then restores
the link: every acked message arrives, once each after dropping duplicates by id, in order.
dept-2's /healthz answers 503 while its link is down and 200 once it is back.
"""

from __future__ import annotations

import contextlib
import secrets
import time

import trio
from trio_websocket import ConnectionClosed

from vim_cluster.tunables import DEFAULTS

from ..support import Client, Collector, make_group, online
from .harness import Cluster, ClusterNode, alice_on_dept1, blocking, steady_to_dept2
from .proxy import ProxyThread

CUT_S = 2.0


async def every_node_up_and_dept2_linked(cluster: Cluster, proxy: ProxyThread) -> None:
    """After a test that cut dept-2's link and stopped nodes: the module's cluster goes on."""
    with trio.CancelScope(shield=True):
        await blocking(proxy.restore)
        for node in (cluster.master, cluster.dept1, cluster.dept2):
            if not node.running():
                await blocking(node.start)
        await blocking(cluster.dept2.wait_health, 200, DEFAULTS.link_open_timeout_s + 10)


async def logged(node: ClusterNode, start: int, *events: str) -> str:
    """The node's log from `start` once it holds one of `events` (a line another process
    writes to its file: read again every 0.1 s, under the caller's deadline)."""
    while not any(event in (text := node.log_text()[start:]) for event in events):
        await trio.sleep(0.1)
    return text


async def collecting(stack: contextlib.AsyncExitStack, nursery: trio.Nursery, url: str,
                     username: str) -> tuple[Client, Collector]:
    """A new user online at `url` whose arriving messages a Collector records from now on."""
    client = await online(stack, url, username)
    collector = Collector(client)
    nursery.start_soon(collector.run)
    return client, collector


async def test_cut_forward_link_loses_nothing_duplicates_nothing_keeps_order_and_healthz_follows_it(
    proxied_cluster: Cluster,
) -> None:
    cluster = proxied_cluster
    proxy = cluster.proxies["dept-2"]
    with trio.fail_after(60):
        async with alice_on_dept1(cluster) as (stack, nursery, alice, tag):
            at_bob, sender = await steady_to_dept2(stack, nursery, cluster, alice, tag, 30)  # through the proxy
            acks = sender.acks
            assert (await blocking(cluster.dept2.healthz))[0] == 200

            # --- cut: every proxied connection closed, new ones refused, for CUT_S
            await blocking(proxy.sever)
            cut_at, acked_at_cut = time.monotonic(), len(acks)
            down_after = await blocking(cluster.dept2.wait_health, 503, CUT_S)
            status, body = await blocking(cluster.dept2.healthz)
            assert status == 503 and body["checks"]["master_link"].startswith("down"), body
            await trio.sleep(max(0.0, cut_at + CUT_S - time.monotonic()))  # the cut's length is under test
            during_cut = len(acks) - acked_at_cut
            refused = proxy.proxy.refused

            # --- restore: the slave reconnects by itself and resends what the master missed
            await blocking(proxy.restore)
            restored_at = time.monotonic()
            # back within the slave's WebSocket open timeout (an attempt made during the cut
            # may wait that long) plus its reconnect backoff
            up_after = await blocking(cluster.dept2.wait_health, 200, DEFAULTS.link_open_timeout_s + 3)
            await sender.wait_acked(len(acks) + 20)  # and a little traffic over the new link
            await sender.stop()

            acked = [a["id"] for a in acks]
            await at_bob.wait_for(acked, 15)  # checked below, with details
            lost = [a["cid"] for a in acks if a["id"] not in at_bob.arrived]
            assert not lost, f"{len(lost)} of {len(acks)} acked messages never arrived: {lost[:10]}"
            assert set(at_bob.order) == set(acked), "bob got messages nobody acked"
            assert at_bob.order == acked, "not in the order alice's messages were acked"
            assert during_cut > 0, "nothing was sent while the link was cut: the test proved nothing"
            assert cluster.dept2.running() and cluster.master.running()
            nursery.cancel_scope.cancel()

    print(f"\nforward link cut {CUT_S:.1f} s: {len(acks)} messages acked ({during_cut} during the cut), "
          f"all delivered in order; {at_bob.duplicates} duplicate frames (dropped by id); "
          f"/healthz 503 after {down_after:.2f} s, 200 again {up_after:.2f} s after the restore "
          f"({time.monotonic() - restored_at:.1f} s ago); {refused} connection(s) refused during the cut")


async def test_a_session_opened_while_the_link_is_cut_gets_what_was_relayed_meanwhile_once_it_links(
    proxied_cluster: Cluster,
) -> None:
    """The master has no route to a session its node opened while unlinked: friend and group
    messages sent to it meanwhile are relayed nowhere. The node's catch-up at link-up
    (node/catch_up.py) delivers them to the open session, in order, before anything newer."""
    cluster = proxied_cluster
    proxy = cluster.proxies["dept-2"]
    with trio.fail_after(60):
        async with alice_on_dept1(cluster) as (stack, nursery, alice, tag):
            async with contextlib.AsyncExitStack() as first:  # bob's only earlier session, closed
                bob_before = await online(first, cluster.dept1.url, f"bob-{tag}")
                group = await make_group(alice, [bob_before])
            bob_id = bob_before.user_id
            assert bob_id is not None

            await blocking(proxy.sever)
            await blocking(cluster.dept2.wait_health, 503, CUT_S)
            bob = await online(stack, cluster.dept2.url, f"bob-{tag}", register=False)
            at_bob = Collector(bob)
            nursery.start_soon(at_bob.run)
            sent = []
            for i in range(3):
                sent.append((await alice.chat(bob_id, f"friend {i}", f"f-{tag}-{i}"))["id"])
                sent.append((await alice.chat(group, f"group {i}", f"g-{tag}-{i}", "group"))["id"])
            assert not at_bob.order, "delivered while the link was cut: the test proves nothing"

            await blocking(proxy.restore)
            await blocking(cluster.dept2.wait_health, 200, DEFAULTS.link_open_timeout_s + 3)
            sent.append((await alice.chat(bob_id, "after the link-up", f"f-{tag}-after"))["id"])
            assert await at_bob.wait_for(sent, 15), f"missing: {set(sent) - at_bob.arrived.keys()}"
            assert at_bob.order == sent, "not in the order alice's messages were acked"
            nursery.cancel_scope.cancel()


async def test_a_slave_killed_while_unlinked_has_its_acked_messages_relayed_once_it_is_gone(
    proxied_cluster: Cluster,
) -> None:
    """dept-2's link is cut; its sender's messages are acked (stored) and wait in its outbox;
    dept-2 is killed with them, then restarted. The master drops the dead instance and asks
    the other nodes to catch up (a CatchUp packet; its own sessions too): bob on dept-1 and
    carol on the master, online all along, get them live, without logging in again, and
    before what the sender writes after dept-2's restart."""
    cluster = proxied_cluster
    proxy = cluster.proxies["dept-2"]
    tag = secrets.token_hex(3)
    try:
        with trio.fail_after(90):
            async with contextlib.AsyncExitStack() as stack:
                nursery = await stack.enter_async_context(trio.open_nursery())
                bob, at_bob = await collecting(stack, nursery, cluster.dept1.url, f"bob-{tag}")
                carol, at_carol = await collecting(stack, nursery, cluster.master.url, f"carol-{tag}")
                at = {"bob": at_bob, "carol": at_carol}
                targets = {"bob": bob.user_id, "carol": carol.user_id}
                sent: dict[str, list[str]] = {"bob": [], "carol": []}
                async with contextlib.AsyncExitStack() as on_dept2:
                    alice = await online(on_dept2, cluster.dept2.url, f"alice-{tag}")
                    for name, user_id in targets.items():
                        assert user_id is not None
                        sent[name].append((await alice.chat(user_id, "linked", f"{name}-{tag}-0"))["id"])
                    for name in at:
                        assert await at[name].wait_for(sent[name], 15), f"{name}: the link does not relay"

                    await blocking(proxy.sever)
                    await blocking(cluster.dept2.wait_health, 503, CUT_S)
                    for i in range(1, 6):  # acked: stored on dept-2's side, relayed nowhere yet
                        for name, user_id in targets.items():
                            assert user_id is not None
                            sent[name].append((await alice.chat(user_id, f"cut {i}", f"{name}-{tag}-{i}"))["id"])
                    await blocking(cluster.dept2.kill)  # with its outbox
                assert all(len(at[name].order) == 1 for name in at), "relayed during the cut: proves nothing"

                await blocking(proxy.restore)
                await blocking(cluster.dept2.start)
                await blocking(cluster.dept2.wait_health, 200, DEFAULTS.link_open_timeout_s + 10)
                alice = await online(stack, cluster.dept2.url, f"alice-{tag}", register=False)
                for name, user_id in targets.items():
                    assert user_id is not None
                    sent[name].append((await alice.chat(user_id, "restarted", f"{name}-{tag}-after"))["id"])
                for name in at:
                    missing = set(sent[name]) - at[name].arrived.keys()
                    assert await at[name].wait_for(sent[name], 20), f"{name} never got {len(missing)}: {missing}"
                    assert at[name].order == sent[name], f"{name}: not in the order alice's messages were acked"
                nursery.cancel_scope.cancel()
    finally:  # the module's cluster goes on with dept-2 linked
        with trio.CancelScope(shield=True):
            await blocking(proxy.restore)
            if not cluster.dept2.running():
                await blocking(cluster.dept2.start)


async def test_a_slave_stopped_gracefully_leaves_with_everything_relayed_and_no_node_catches_up_for_it(
    proxied_cluster: Cluster,
) -> None:
    """SIGTERM to dept-2 while its sender's messages are still coming in: it refuses new
    sessions, closes its own, lets its store writer hand over what they deliver, and tells the
    master it leaves (a Leaving packet, after everything it queued; node/app.py
    `_leave_cluster`). bob on dept-1 gets every acked message live, in order, and the master,
    when it drops dept-2, asks no node to catch up for it: before, every graceful stop cost
    every node a catch-up (duplicates to all their users)."""
    cluster = proxied_cluster
    tag = secrets.token_hex(3)
    master_from, dept2_from = len(cluster.master.log_text()), len(cluster.dept2.log_text())
    try:
        with trio.fail_after(90):
            async with contextlib.AsyncExitStack() as stack:
                nursery = await stack.enter_async_context(trio.open_nursery())
                bob, at_bob = await collecting(stack, nursery, cluster.dept1.url, f"bob-{tag}")
                sent: list[str] = []
                async with contextlib.AsyncExitStack() as on_dept2:
                    alice = await online(on_dept2, cluster.dept2.url, f"alice-{tag}")
                    for i in range(200):  # pipelined: many are still on their way at the stop
                        await alice.send("message", cid=f"{tag}-{i}", chatId=bob.user_id, type="friend",
                                         messageType="text", content=f"m {i}")
                    sent.append((await alice.expect("ack"))["id"])
                    stopped = trio.Event()

                    async def stop() -> None:
                        assert await blocking(cluster.dept2.stop) == 0
                        stopped.set()

                    nursery.start_soon(stop)
                    with contextlib.suppress(ConnectionClosed):
                        while True:  # the acks that still come before dept-2 closes the session
                            frame = await alice.next_frame()
                            if frame["code"] == "ack":
                                sent.append(frame["message"]["id"])
                    await stopped.wait()
                assert await at_bob.wait_for(sent, 15), f"missing: {set(sent) - at_bob.arrived.keys()}"
                acked = set(sent)
                assert [m for m in at_bob.order if m in acked] == sent  # unacked ones may come too
                # until the master drops dept-2 (its lease released)
                master_log = await logged(cluster.master, master_from, "catch_up_not_needed", "catch_up_asked_of_all")
                assert "forward_peer_leaving" in master_log
                assert "catch_up_asked_of_all" not in master_log, master_log
                assert "forward_link_left" in cluster.dept2.log_text()[dept2_from:]
                print(f"\n{len(sent)} of 200 acked before the stop closed the sender's session")
                nursery.cancel_scope.cancel()
    finally:  # the module's cluster goes on with dept-2 linked
        with trio.CancelScope(shield=True):
            if not cluster.dept2.running():
                await blocking(cluster.dept2.start)
            await blocking(cluster.dept2.wait_health, 200, DEFAULTS.link_open_timeout_s + 10)


async def test_a_slave_unlinked_across_a_master_restart_and_killed_before_linking_has_its_messages_relayed(
    proxied_cluster: Cluster,
) -> None:
    """The master restarts while dept-2's link is cut; dept-1 links to the new master (and
    catches up). Then dept-2's sender's messages are acked (stored) and wait in its outbox, and
    dept-2 is killed with them, never having linked to the new master, which so never knew that
    process. It stood in for it from its start (forward_hub `_stand_in_for_unlinked`): when
    dept-2's new process links under another lease owner, every node catches up, and bob on
    dept-1, online all along, gets them live, before what the sender writes after."""
    cluster = proxied_cluster
    proxy = cluster.proxies["dept-2"]
    tag = secrets.token_hex(3)
    try:
        with trio.fail_after(120):
            async with contextlib.AsyncExitStack() as stack:
                nursery = await stack.enter_async_context(trio.open_nursery())
                bob, at_bob = await collecting(stack, nursery, cluster.dept1.url, f"bob-{tag}")
                assert bob.user_id is not None
                sent: list[str] = []
                async with contextlib.AsyncExitStack() as on_dept2:
                    alice = await online(on_dept2, cluster.dept2.url, f"alice-{tag}")
                    sent.append((await alice.chat(bob.user_id, "linked", f"{tag}-0"))["id"])
                    assert await at_bob.wait_for(sent, 15), "the link does not relay"

                    await blocking(proxy.sever)
                    await blocking(cluster.dept2.wait_health, 503, CUT_S)
                    master_from = len(cluster.master.log_text())
                    assert await blocking(cluster.master.stop) == 0
                    await blocking(cluster.master.start)
                    await blocking(cluster.master.wait_health, 200)
                    await blocking(cluster.dept1.wait_health, 200, DEFAULTS.link_open_timeout_s + 10)
                    for i in range(1, 6):  # acked: stored on dept-2's side, relayed nowhere yet
                        sent.append((await alice.chat(bob.user_id, f"cut {i}", f"{tag}-{i}"))["id"])
                    # dept-1's process linked again: a stand-in it replaced asks nothing
                    assert "catch_up_asked_of_all" not in cluster.master.log_text()[master_from:]
                    await blocking(cluster.dept2.kill)  # with its outbox, never linked to this master
                assert len(at_bob.order) == 1, "relayed during the cut: proves nothing"

                await blocking(proxy.restore)
                await blocking(cluster.dept2.start)
                await blocking(cluster.dept2.wait_health, 200, DEFAULTS.link_open_timeout_s + 10)
                alice = await online(stack, cluster.dept2.url, f"alice-{tag}", register=False)
                sent.append((await alice.chat(bob.user_id, "restarted", f"{tag}-after"))["id"])
                got_all = await at_bob.wait_for(sent, 20)
                missing = [m for m in sent if m not in at_bob.arrived]
                assert got_all, f"bob never got {len(missing)} of {len(sent)}: {missing}"
                assert at_bob.order == sent, "not in the order alice's messages were acked"
                assert cluster.master.log_text()[master_from:].count("catch_up_asked_of_all") == 1
                nursery.cancel_scope.cancel()
    finally:  # the module's cluster goes on with dept-2 linked
        await every_node_up_and_dept2_linked(cluster, proxy)


async def test_a_slave_stopped_cleanly_before_linking_to_a_new_master_is_said_to_have_stopped_not_lapsed(
    proxied_cluster: Cluster,
) -> None:
    """The operator walkthrough's secret rotation: the master restarts while dept-2 cannot link
    (here its link is cut), so the new master stands in for dept-2's process; then dept-2 is
    stopped cleanly (SIGTERM), unlinked, so it cannot say it leaves. Its lease is released, not
    lapsed: the master drops it with an info line that says so (it warned `its lease lapsed in
    Redis` before), and asks for the catch-up as for any process that may hold messages."""
    cluster = proxied_cluster
    proxy = cluster.proxies["dept-2"]
    try:
        with trio.fail_after(90):
            await blocking(proxy.sever)
            await blocking(cluster.dept2.wait_health, 503, CUT_S + 10)
            assert await blocking(cluster.master.stop) == 0
            await blocking(cluster.master.start)
            await blocking(cluster.master.wait_health, 200)
            master_from = len(cluster.master.log_text())
            await logged(cluster.master, master_from, "forward_hub_warm")  # its reaper has seen dept-2 beat
            assert await blocking(cluster.dept2.stop) == 0
            # the reaper finds its lock gone (every lease_heartbeat_s)
            master_log = await logged(cluster.master, master_from, "forward_peer_dropped")
            dropped = next(line for line in master_log.splitlines() if "forward_peer_dropped" in line)
            assert "[info" in dropped and "peer=dept-2" in dropped, dropped
            assert "it stopped before it linked to this master (its lease released, not lapsed)" in dropped, dropped
            await logged(cluster.master, master_from, "catch_up_asked_of_all")
    finally:  # the module's cluster goes on with dept-2 linked
        await every_node_up_and_dept2_linked(cluster, proxy)
