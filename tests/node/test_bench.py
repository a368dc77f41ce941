"""`vim-cluster bench`'s load generator against a live node: every acked message is counted
delivered, nothing lost, latencies recorded."""

import argparse

import trio

from vim_cluster import bench


async def test_run_pair_counts_every_acked_message_delivered(url: str) -> None:
    with trio.fail_after(30):
        accounts = await bench.create_users(url, 4, "bench-t", parallel=2)
        args = argparse.Namespace(size=20, duration=0, messages=60, window=8, rate=0)
        result = await bench.run_pair(url, url, accounts[:2], accounts[2:], args)
    assert (result["sent"], result["acked"], result["delivered"]) == (60, 60, 60)
    assert result["lost"] == 0 and result["errors"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]


async def test_paced_run_keeps_to_the_rate(url: str) -> None:
    with trio.fail_after(30):
        accounts = await bench.create_users(url, 2, "bench-r")
        args = argparse.Namespace(size=20, duration=1.0, messages=0, window=8, rate=50)
        result = await bench.run_pair(url, url, accounts[:1], accounts[1:], args)
    assert 40 <= result["acked"] <= 60 and result["lost"] == 0
