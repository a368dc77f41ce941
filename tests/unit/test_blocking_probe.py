"""BlockingRunner.probe: a health check's read keeps its timeout however long the backend hangs,
and a hung backend gets one probe thread, not one per check."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from vim_cluster.errors import StoreUnavailable
from vim_cluster.node.blocking import BlockingRunner


async def test_a_probe_of_a_hung_backend_times_out_and_the_next_fails_at_once_until_it_returns() -> None:
    runner = BlockingRunner("redis", 1)
    release = threading.Event()
    calls: list[str] = []

    def hung() -> str:
        calls.append("hung")
        release.wait(10)
        return "late"

    stuck = threading.Event()

    async def writer() -> None:  # fills the limit: a store writer stuck on the same backend
        await runner(stuck.wait, 10)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            assert runner.threads() == 1
            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(0.2):  # the thread is abandoned: the timeout holds
                    await runner.probe(hung)
            with pytest.raises(StoreUnavailable, match="previous check has not returned"):
                await runner.probe(lambda: calls.append("second"))
            stuck.set()
        release.set()
        while True:  # once the hung call returns, probes run again
            try:
                assert await runner.probe(lambda: "ok") == "ok"
                break
            except StoreUnavailable:
                await trio.sleep(0.01)
    assert calls == ["hung"]
