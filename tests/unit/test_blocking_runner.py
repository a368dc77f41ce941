"""BlockingRunner's own worker threads: the limit, results and errors, no abandon on cancel,
and idle threads that end."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from vim_cluster.node.blocking import BlockingRunner


async def test_results_and_errors_come_back_to_the_caller() -> None:
    runner = BlockingRunner("t", 2)
    with trio.fail_after(5):
        assert await runner(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ZeroDivisionError):
            await runner(lambda: 1 // 0)
        assert await runner(threading.current_thread) is not threading.current_thread()


async def test_at_most_limit_calls_run_at_once_and_the_rest_wait() -> None:
    runner = BlockingRunner("t", 2)
    gate = threading.Event()
    running = 0
    most = 0
    order: list[int] = []
    lock = threading.Lock()

    both = threading.Event()  # two calls are inside job at once

    def job(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            if running == 2:
                both.set()
        gate.wait(5)
        with lock:
            running -= 1
            order.append(n)
        return n

    results: list[int] = []

    async def call(n: int) -> None:
        results.append(await runner(job, n))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(call, n)
            await trio.testing.wait_all_tasks_blocked()
            assert runner.threads() == 2
            # a barrier: both threads are in job (they may start later than the trio tasks block)
            assert await trio.to_thread.run_sync(both.wait, 5)
            gate.set()
    assert most == 2
    assert sorted(results) == sorted(order) == list(range(6))


async def test_a_cancelled_caller_still_waits_for_its_call_to_finish() -> None:
    runner = BlockingRunner("t", 1)
    release = threading.Event()
    finished: list[str] = []

    def write() -> None:
        release.wait(5)
        finished.append("write")

    returned = trio.Event()

    async def caller(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await runner(write)
        returned.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            scope = await nursery.start(caller)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert not returned.is_set()  # not abandoned: the caller still waits for its write
            release.set()
            await returned.wait()
        assert finished == ["write"]


async def test_a_cancelled_caller_does_not_start_its_call() -> None:
    runner = BlockingRunner("t", 1)
    calls: list[int] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await runner(calls.append, 1)
    assert calls == [] and runner.threads() == 0


async def test_idle_threads_end_and_calls_start_new_ones() -> None:
    runner = BlockingRunner("t", 3, idle_s=0.01)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(runner, threading.Event().wait, 0.05)
        assert runner.threads() == 3
        while runner.threads():
            await trio.sleep(0.01)
        assert await runner(lambda: "again") == "again"
        assert runner.threads() == 1
