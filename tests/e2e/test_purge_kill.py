"""`vim-cluster purge` killed with SIGKILL in the middle: every batch it committed stays
committed, nothing younger than the cutoff is touched, and the next run finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from vim_cluster.adapters.redis_registry import Keys
from vim_cluster.adapters.sqlite_messages import SqliteMessages
from vim_cluster.ids import first_id_at
from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId
from vim_cluster.ports import NewMessage

from ..support import write_config

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
DAY = 86_400_000
OLD = 20_000


def count(path: Path) -> int:
    store = SqliteMessages(str(path))
    try:
        return sum(1 for _ in iter_all(store))
    finally:
        store.close()


def iter_all(store: SqliteMessages) -> list[Message]:
    return store.messages_of_user(UserId(1), MessageId(0), 10 * OLD)


def seed(path: Path) -> list[Message]:
    now = time.time_ns() // 1_000_000
    store = SqliteMessages(str(path))
    young = []
    try:
        for days, n, keep in ((40, OLD, False), (0, 50, True)):
            made = [Message(MessageId(first_id_at(now - days * DAY + i // 64) + i % 64), f"{days}-{i}", UserId(1), 2,
                            ChatType.FRIEND, MessageType.TEXT, "x", None, now) for i in range(n)]
            for start in range(0, n, 5000):
                store.save_messages([NewMessage(m, (UserId(2),)) for m in made[start:start + 5000]])
            if keep:
                young = made
    finally:
        store.close()
    return young


def purge(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "vim_cluster.cli", "purge", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})


def test_a_purge_killed_mid_way_keeps_its_batches_and_the_next_run_finishes(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path, redis_url=redis_url, extra={"message": {"retention-days": 30, "purge-batch": 100}})
    path = tmp_path / "data" / "messages.db"
    young = seed(path)
    first = purge(config)
    try:
        deadline = time.monotonic() + 60
        while (left := count(path)) > OLD - 2000:  # a few batches are in
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.communicate(timeout=10)  # reaps it and closes its pipes
    after_kill = count(path)
    assert OLD + len(young) > after_kill > len(young) and after_kill <= left
    with redis.Redis.from_url(redis_url) as r:
        assert r.get(Keys.duty_done("purge")) is None  # the killed run did not finish
        blocked = purge(config)
        out, err = blocked.communicate(timeout=60)
        assert blocked.returncode == 1 and "another node holds the purge lock" in err
        r.delete(Keys.duty_lock("purge"))  # what the lock's 60 s TTL does for a dead holder
    second = purge(config)
    out, err = second.communicate(timeout=90)
    assert second.returncode == 0, err
    assert f"purged {after_kill - len(young)} messages" in out
    store = SqliteMessages(str(path))
    try:
        assert iter_all(store) == young
        assert [m.id for m in store.pending(UserId(2), MessageId(0), 1000)] == [m.id for m in young]
    finally:
        store.close()
