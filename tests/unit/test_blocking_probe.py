"""BlockingRunner.probe: a health check's read keeps its timeout however long the backend hangs,
a hung backend gets one probe thread, not one per check, and checks that overlap share the
answer of the probe in flight (none of them is told the backend is down)."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from vim_cluster.errors import StoreUnavailable
from vim_cluster.node.blocking import BlockingRunner


async def test_a_probe_of_a_hung_backend_times_out_and_the_next_waits_for_it_without_a_thread() -> None:
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
            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(0.2):  # waits for the hung probe, within its own timeout
                    await runner.probe(lambda: calls.append("second"))
            stuck.set()
        release.set()
        assert await runner.probe(lambda: "ok") in ("late", "ok")  # the hung one's answer, or a new one's
        assert await runner.probe(lambda: "ok") == "ok"  # once it returned, probes run again
    assert calls == ["hung"]


async def test_overlapping_probes_share_the_answer_of_the_one_in_flight() -> None:
    """Two health checks at once (a load balancer's /healthz and the dashboard's /stats.json)
    both get the backend's answer, and a failure is each one's failure."""
    runner = BlockingRunner("directory", 1)
    release = threading.Event()
    calls: list[str] = []

    def slow(answer: str) -> str:
        calls.append(answer)
        release.wait(5)
        return answer

    def failing() -> None:
        release.wait(5)
        raise StoreUnavailable("directory: connection refused")

    answers: list[str] = []

    async def check() -> None:
        answers.append(await runner.probe(slow, "ok"))

    async def failing_check() -> None:
        try:
            await runner.probe(failing)
        except StoreUnavailable as exc:
            answers.append(str(exc))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(check)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert answers == ["ok"] * 5 and calls == ["ok"]  # one thread asked the backend
        answers.clear()
        release.clear()
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(failing_check)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert answers == ["directory: connection refused"] * 3
