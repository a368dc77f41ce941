"""The operator's view of a running cluster: `vim-cluster nodes/whereis/kick`, /metrics, and
what the cluster refuses (a second process for a node id, a slave with the wrong secret)."""

from __future__ import annotations

import contextlib
import re
import secrets
import time

import trio

from ..support import NodeProcess, online
from .harness import Cluster, blocking, cli_env, nodes_table, run_cli


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample `name` in Prometheus text."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"no sample {name} in /metrics:\n{text}"
    return float(found.group(1))


async def test_nodes_lists_the_three_nodes_with_their_roles_urls_and_alive(cluster: Cluster) -> None:
    with trio.fail_after(30):
        result = await blocking(run_cli, "nodes", "--config", str(cluster.master.config))
    assert result.returncode == 0, result
    table = nodes_table(result.stdout)
    assert {n: (row["ROLE"], row["ALIVE"]) for n, row in table.items()} == {
        "master": ("master", "yes"), "dept-1": ("slave", "yes"), "dept-2": ("slave", "yes"),
    }
    for node in (cluster.master, cluster.dept1, cluster.dept2):
        assert table[node.name]["URL"] == node.url
        assert re.fullmatch(r"\d+\.\ds ago", table[node.name]["HEARTBEAT"])
        assert table[node.name]["CONNECTIONS"].isdigit()


async def test_whereis_lists_a_users_devices_on_two_nodes_and_kick_closes_both_with_4002(
    cluster: Cluster,
) -> None:
    name = f"kim-{secrets.token_hex(3)}"
    master_cfg = str(cluster.master.config)
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            web = await online(stack, cluster.dept1.url, name)
            pc = await online(stack, cluster.dept2.url, name, register=False, client="pc", uuid="kim-pc")
            bystander = await online(stack, cluster.dept2.url, f"by-{secrets.token_hex(3)}")

            found = await blocking(run_cli, "whereis", name, "--config", master_cfg)
            assert found.returncode == 0, found
            rows = [line.split("\t") for line in found.stdout.splitlines()]
            assert [(r[0], r[2], r[3]) for r in rows] == [
                ("dept-1", "client web", "uuid -"), ("dept-2", "client pc", "uuid kim-pc"),
            ]
            by_id = await blocking(run_cli, "whereis", web.user_id, "--config", master_cfg)
            assert by_id.returncode == 0 and by_id.stdout == found.stdout

            kicked = await blocking(run_cli, "kick", name, "--config", master_cfg)
            assert kicked.returncode == 0, kicked
            assert "closed 2 session(s)" in kicked.stdout and "dept-1, dept-2" in kicked.stdout
            assert (await web.expect_closed(10)).code == 4002
            assert (await pc.expect_closed(10)).code == 4002
            await bystander.send("ping")  # the node's other sessions stay
            assert "ts" in await bystander.expect("pong")

            with trio.fail_after(10):
                while (await blocking(run_cli, "whereis", name, "--config", master_cfg)).returncode != 1:
                    await trio.sleep(0.2)


async def test_metrics_expose_connections_messages_forward_queue_and_relay_latency(cluster: Cluster) -> None:
    with trio.fail_after(30):
        before = await blocking(cluster.dept1.metrics)
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, cluster.dept1.url, f"ma-{secrets.token_hex(3)}")
            bob = await online(stack, cluster.dept2.url, f"mb-{secrets.token_hex(3)}")
            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "measured", "me-1")
            assert (await bob.expect("message"))["id"] == ack["id"]
            sender, receiver = await blocking(cluster.dept1.metrics), await blocking(cluster.dept2.metrics)

    for text in (sender, receiver):
        for name in ("vim_connections", "vim_messages_in_total", "vim_forward_queue_depth",
                     "vim_relay_latency_seconds_count", "vim_relay_latency_seconds_sum"):
            metric(text, name)
        assert 'vim_relay_latency_seconds_bucket{le="0.01"}' in text
        assert "# TYPE vim_relay_latency_seconds histogram" in text
    assert metric(sender, "vim_connections") >= 1 and metric(receiver, "vim_connections") >= 1
    assert metric(sender, "vim_messages_in_total") == metric(before, "vim_messages_in_total") + 1
    assert metric(receiver, "vim_relay_latency_seconds_count") >= 1  # bob's message came relayed
    assert metric(sender, "vim_forward_queue_depth") >= 0


async def test_a_second_process_for_a_held_node_id_refuses_to_start(cluster: Cluster) -> None:
    with trio.fail_after(60):
        second = await blocking(lambda: run_cli("run", str(cluster.dept1.config), timeout=45))
    output = second.stdout + second.stderr
    assert second.returncode != 0, output
    assert "node id 'dept-1' is held by another live process" in output, output
    assert "Traceback" not in output, output  # an operator gets a message, not a stack trace
    assert cluster.dept1.running()
    assert (await blocking(cluster.dept1.healthz))[0] == 200


async def test_a_slave_with_the_wrong_secret_is_refused_by_the_master(cluster: Cluster) -> None:
    outsider = cluster.write_node("dept-x", "slave", cluster.forward_url, folder=cluster.folder / "other-secret")
    assert (outsider.config.parent / "secret.key").read_text() != (cluster.folder / "secret.key").read_text()
    process = NodeProcess(outsider.config, outsider.port, env=cli_env())
    outsider.process = process
    master_log_from = len(cluster.master.log_text())
    try:
        with trio.fail_after(60):
            await blocking(process.start)
            # refused, and refused again at each retry (its backoff starts at 0.1 s): it never links
            deadline = time.monotonic() + 15
            refused = ""
            while time.monotonic() < deadline:
                refused = cluster.master.log_text()[master_log_from:]
                if refused.count("forward_peer_refused") >= 3:
                    break
                await trio.sleep(0.2)  # polls the master's log (another process)
            assert refused.count("forward_peer_refused") >= 3, refused
            assert all("secret" in line for line in refused.splitlines() if "forward_peer_refused" in line)
            status, body = await blocking(outsider.healthz)  # and it stays unhealthy
            assert status == 503 and body["checks"]["master_link"].startswith("down"), body
            assert "forward_link_up" not in outsider.log_text()
            assert cluster.master.running() and (await blocking(cluster.dept1.healthz))[0] == 200
    finally:
        await blocking(outsider.stop)
