"""A node that stops heartbeating (SIGSTOP) is declared dead and loses its routes; once it runs
again it finds its lease lapsed but held by nobody else, so it re-takes it, publishes its live
sessions' routes again and serves on (only a lease held by another owner stops a node).
`vim-cluster heartbeat` tells live from dead."""

from __future__ import annotations

import contextlib
import secrets
import signal
import time

import trio

from vim_cluster.tunables import DEFAULTS

from ..support import online
from .harness import Cluster, blocking, nodes_table, routes_on, run_cli


async def test_heartbeat_command_exits_0_for_every_live_node(cluster: Cluster) -> None:
    with trio.fail_after(60):
        for node in (cluster.master, cluster.dept1, cluster.dept2):
            result = await blocking(run_cli, "heartbeat", str(node.config))
            assert result.returncode == 0, (node.name, result.stdout, result.stderr)
            assert f"{node.name}: alive" in result.stdout


async def test_stopped_slave_is_declared_dead_loses_its_routes_and_retakes_its_lease_when_resumed(
    cluster: Cluster,
) -> None:
    master_cfg = str(cluster.master.config)
    name = f"bob-{secrets.token_hex(3)}"
    with trio.fail_after(90):
        async with contextlib.AsyncExitStack() as stack:
            bob = await online(stack, cluster.dept2.url, name)  # bob's only session: on dept-2
            located = await blocking(run_cli, "whereis", name, "--config", master_cfg)
            assert located.returncode == 0 and located.stdout.startswith("dept-2\t"), located
            assert bob.user_id is not None
            assert routes_on(cluster.redis_url, bob.user_id, "dept-2")

            stopped_at = time.monotonic()
            cluster.dept2.signal(signal.SIGSTOP)
            try:
                # --- within ~12 s `nodes` shows it DEAD (the lease TTL is 10 s)
                dead_after = None
                while time.monotonic() - stopped_at < 15:
                    asked_at = time.monotonic()
                    listed = await blocking(run_cli, "nodes", "--config", master_cfg)
                    assert listed.returncode == 0, listed
                    table = nodes_table(listed.stdout)
                    if table["dept-2"]["ALIVE"] == "DEAD":
                        dead_after = asked_at - stopped_at
                        break
                    await trio.sleep(0.3)
                assert dead_after is not None, f"dept-2 never shown DEAD:\n{listed.stdout}"
                assert dead_after <= DEFAULTS.lease_ttl_s + 2, f"DEAD only {dead_after:.1f} s after SIGSTOP"
                assert {n: row["ALIVE"] for n, row in table.items()} == {
                    "master": "yes", "dept-1": "yes", "dept-2": "DEAD"}
                assert table["master"]["ROLE"] == "master" and table["dept-2"]["ROLE"] == "slave"

                # --- its routes are gone: whereis finds nothing, and so does Redis itself
                with trio.fail_after(10):  # the master's reaper purges every 2 s
                    while routes_on(cluster.redis_url, bob.user_id, "dept-2"):
                        await trio.sleep(0.2)
                gone = await blocking(run_cli, "whereis", name, "--config", master_cfg)
                assert gone.returncode == 1 and "no session" in gone.stdout, gone

                # --- heartbeat: 1 for the dead node, 0 for the live ones
                dead = await blocking(run_cli, "heartbeat", str(cluster.dept2.config))
                assert dead.returncode == 1 and "DEAD" in dead.stderr, dead
                live = await blocking(run_cli, "heartbeat", str(cluster.dept1.config))
                assert live.returncode == 0, live
            finally:
                cluster.dept2.signal(signal.SIGCONT)

            # --- running again: its lease lapsed and nobody else holds it, so it re-takes it and
            # republishes bob's route (before, it stopped itself, "lost its lock")
            resumed_at = time.monotonic()
            with trio.fail_after(15):
                while True:
                    listed = await blocking(run_cli, "nodes", "--config", master_cfg)
                    if (nodes_table(listed.stdout)["dept-2"]["ALIVE"] == "yes"
                            and routes_on(cluster.redis_url, bob.user_id, "dept-2")):
                        break
                    await trio.sleep(0.2)
            back_in = time.monotonic() - resumed_at
            assert cluster.dept2.running(), cluster.dept2.log_tail()
            assert "lost its lock" not in cluster.dept2.log_text()
            assert "lease_retaken" in cluster.dept2.log_text()
            located = await blocking(run_cli, "whereis", name, "--config", master_cfg)
            assert located.returncode == 0 and located.stdout.startswith("dept-2\t"), located
            await blocking(cluster.dept2.wait_health, 200, 15)  # and its master link is up again
    print(f"\ndept-2 SIGSTOPped: shown DEAD after {dead_after:.1f} s; after SIGCONT it was alive with its "
          f"routes again in {back_in:.1f} s")
