"""`vim-cluster user delete` while a node cannot be told: its link to the master cut, or the
process frozen past its lease. Once it links again it closes the deleted user's sessions (4006)
and refuses the token. The last test freezes dept-2 (SIGSTOP) and lets it run again: keep it last."""

from __future__ import annotations

import contextlib
import secrets
import signal

import trio

from vim_cluster.tunables import DEFAULTS

from ..support import connect, online
from .harness import Cluster, blocking, nodes_table, routes_on, run_cli


async def test_a_node_cut_off_from_the_master_during_the_deletion_closes_the_users_sessions_once_it_links(
    proxied_cluster: Cluster,
) -> None:
    """dept-2's forward link is cut (it stays live in Redis): the master keeps the kick for it, and
    the command says that not every node confirmed it (it said: no answer to the handshake)."""
    cluster = proxied_cluster
    proxy = cluster.proxies["dept-2"]
    name = f"cut-{secrets.token_hex(3)}"
    with trio.fail_after(90):
        async with contextlib.AsyncExitStack() as stack:
            gone = await online(stack, cluster.dept2.url, name)
            await blocking(proxy.sever)
            try:
                await blocking(cluster.dept2.wait_health, 503, 5)
                deleted = await blocking(run_cli, "user", "delete", name, "--config", str(cluster.master.config))
            finally:
                await blocking(proxy.restore)
            assert deleted.returncode == 3 and "account deleted" in deleted.stdout, deleted
            problem = deleted.stderr.strip()
            assert "not every node confirmed within 10 s" in problem, problem
            assert "handshake" not in problem and len(problem.splitlines()) == 1, problem
            assert (await gone.expect_closed(DEFAULTS.link_open_timeout_s + 10)).code == 4006
            async with connect(cluster.dept2.url) as again:
                await again.send("ready", token=gone.token, client="pc")
                await again.expect_error("unauthorized")


async def test_a_node_stopped_during_the_deletion_refuses_the_token_once_started_again(
    proxied_cluster: Cluster,
) -> None:
    cluster = proxied_cluster
    name = f"stopped-{secrets.token_hex(3)}"
    with trio.fail_after(90):
        async with connect(cluster.dept2.url) as first:
            await first.register_login(name)
            await first.ready()
            token = first.token
        assert await blocking(cluster.dept2.stop) == 0
        try:
            deleted = await blocking(run_cli, "user", "delete", name, "--erase", "--config", str(cluster.master.config))
            assert deleted.returncode == 0 and "dept-2" not in deleted.stdout, deleted
        finally:
            await blocking(cluster.dept2.start)
            await blocking(cluster.dept2.wait_health, 200, DEFAULTS.link_open_timeout_s + 10)
        async with connect(cluster.dept2.url) as again:
            await again.send("ready", token=token, client="web")
            await again.expect_error("unauthorized")


async def test_a_node_frozen_past_its_lease_during_the_deletion_closes_the_users_sessions_once_it_links(
    proxied_cluster: Cluster,
) -> None:
    """The master drops the kick of a node whose lease lapsed (it is not live): that node, once
    running again, re-takes its lease and republishes its routes, then checks its users with
    the directory at its link-up's catch-up (it was: a deleted user stayed connected there, sent
    messages, and its token opened new sessions)."""
    cluster = proxied_cluster
    name, peer = f"frozen-{secrets.token_hex(3)}", f"peer-{secrets.token_hex(3)}"
    master_cfg = str(cluster.master.config)
    with trio.fail_after(90):
        async with contextlib.AsyncExitStack() as stack:
            gone = await online(stack, cluster.dept2.url, name)
            bob = await online(stack, cluster.dept1.url, peer)
            assert gone.user_id is not None and bob.user_id is not None
            cluster.dept2.signal(signal.SIGSTOP)
            try:
                while nodes_table((await blocking(run_cli, "nodes", "--config", master_cfg)).stdout
                                  )["dept-2"]["ALIVE"] != "DEAD":
                    await trio.sleep(0.3)  # the lease lapses within its 10 s TTL
                deleted = await blocking(run_cli, "user", "delete", name, "--erase", "--config", master_cfg)
                assert deleted.returncode == 0 and "account deleted" in deleted.stdout, deleted
                assert "dept-2" not in deleted.stdout  # not live: not told
            finally:
                cluster.dept2.signal(signal.SIGCONT)
            assert (await gone.expect_closed(15)).code == 4006
            await blocking(cluster.dept2.wait_health, 200, 15)
            async with connect(cluster.dept2.url) as again:  # dept-2 had the user cached
                await again.send("ready", token=gone.token, client="pc")
                await again.expect_error("unauthorized")
            assert routes_on(cluster.redis_url, gone.user_id, "dept-2") == []
            assert "deleted_user_dropped" in cluster.dept2.log_text()
            await bob.send("ping")
            assert "ts" in await bob.expect("pong")
