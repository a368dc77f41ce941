"""`vim-cluster bench`'s load generator against a live node: every acked message is counted
delivered, nothing lost, latencies recorded."""

import argparse
import os

import trio

from vim_cluster import bench
from vim_cluster.node.ws_messages import MessageSocket


async def test_run_pair_counts_every_acked_message_delivered(url: str) -> None:
    with trio.fail_after(30):
        accounts = await bench.create_users(url, 4, "bench-t", parallel=2)
        args = argparse.Namespace(size=20, duration=0, messages=60, window=8, rate=0)
        result = await bench.run_pair(url, url, accounts[:2], accounts[2:], args)
    assert (result["sent"], result["acked"], result["delivered"]) == (60, 60, 60)
    assert result["lost"] == 0 and result["errors"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]


async def test_a_timeline_gives_each_message_its_send_ack_and_delivery_times(url: str, tmp_path) -> None:
    import csv

    timeline = tmp_path / "timeline.csv"
    with trio.fail_after(30):
        accounts = await bench.create_users(url, 4, "bench-tl", parallel=2)
        args = argparse.Namespace(size=20, duration=0, messages=40, window=4, rate=0, timeline=str(timeline))
        result = await bench.run_pair(url, url, accounts[:2], accounts[2:], args)
    with timeline.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {r["cid"] for r in rows} == {f"s{i}-{n}" for i in (0, 1) for n in range(20)}
    sent = [float(r["sent_s"]) for r in rows]
    assert sent == sorted(sent) and sent[0] == 0.0  # in the order sent, from the first send
    for r in rows:
        assert float(r["sent_s"]) < float(r["acked_s"]) and float(r["sent_s"]) < float(r["delivered_s"])
    # The summary's ack latency: sender -> ack, as the timeline has it.
    acks = sorted((float(r["acked_s"]) - float(r["sent_s"])) * 1000 for r in rows)
    assert abs(result["ack_p50_ms"] - bench.percentile(acks, 50)) < 0.01
    assert 0 < result["ack_p50_ms"] <= result["ack_p99_ms"]


async def test_paced_run_keeps_to_the_rate(url: str) -> None:
    with trio.fail_after(30):
        accounts = await bench.create_users(url, 2, "bench-r")
        args = argparse.Namespace(size=20, duration=1.0, messages=0, window=8, rate=50)
        result = await bench.run_pair(url, url, accounts[:1], accounts[1:], args)
    assert 40 <= result["acked"] <= 60 and result["lost"] == 0


async def test_run_pair_reports_generator_and_server_cpu_of_the_message_window(url: str) -> None:
    """The node runs in this process, so the "server" (from /proc, in clock ticks) and the
    "generator" (process_time) are the same process here: over the same window they agree."""
    with trio.fail_after(30):
        accounts = await bench.create_users(url, 4, "bench-c", parallel=2)
        args = argparse.Namespace(size=20, duration=0, messages=200, window=8, rate=0)  # 100 each: under the rate limit
        result = await bench.run_pair(url, url, accounts[:2], accounts[2:], args, pids=[os.getpid()])
    assert result["delivered"] == 200 and result["cpu_window_s"] > 0, result
    assert result["generator_cpu_s"] > 0
    assert abs(result["generator_cpu_us_per_delivered"] * 200 / 1e6 - result["generator_cpu_s"]) <= 0.005
    assert abs(result["server_cpu_s"] - result["generator_cpu_s"]) <= 0.03  # ticks of 10 ms, rounding
    assert result["server_cores"] > 0
    assert abs(result["server_cores"] * result["cpu_window_s"] - result["server_cpu_s"]) <= 0.01 + 0.005 * (
        result["server_cores"] + 1)


async def test_message_scenarios_connect_with_the_lean_client(url: str) -> None:
    """On a 2-core machine the load generator's own CPU caps the rate: its message connections
    are node/ws_open's lean client (no reader task or message channel per connection), not
    trio-websocket's, for every system it drives (the dialects get the same socket)."""
    seen: list[type] = []

    class Recording:
        async def ready(self, ws: bench.Channel, account: bench.Account, client: str) -> bench.Speaker:
            seen.append(type(ws))
            return await bench.VIM.ready(ws, account, client)

    with trio.fail_after(30):
        accounts = await bench.create_users(url, 2, "bench-l")
        args = argparse.Namespace(size=20, duration=0, messages=10, window=4, rate=0)
        result = await bench.run_pair(url, url, accounts[:1], accounts[1:], args, Recording())
    assert (result["delivered"], result["lost"]) == (10, 0)
    assert seen == [MessageSocket, MessageSocket]


def test_a_timeline_the_bench_cannot_give_or_write_is_refused_in_one_line(tmp_path, capsys) -> None:
    from vim_cluster import cli

    configs = tmp_path / "configs"
    configs.mkdir()
    for argv, says in [
        (["connections", "--timeline", str(tmp_path / "t.csv")], "--timeline goes with cross-node, local or group"),
        (["cross-node", "--timeline", str(tmp_path / "missing" / "t.csv")], "cannot write --timeline"),
        (["cross-node", "--timeline", str(tmp_path)], "cannot write --timeline"),
    ]:
        # The command itself, not cli.main: that would configure logging to this test's stderr.
        args = cli.build_parser().parse_args(["bench", *argv, "--configs", str(configs)])
        assert args.func(args) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1
