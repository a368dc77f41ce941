"""A node with `vim.message.retention-days` purges at its purge hour, once per day, and reports it."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from vim_cluster.adapters.sqlite_messages import SqliteMessages
from vim_cluster.ids import first_id_at
from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId
from vim_cluster.ports import NewMessage

DAY = 86_400_000


def seed(path: Path, days_ago: int, count: int) -> list[Message]:
    at = time.time_ns() // 1_000_000 - days_ago * DAY
    made = [Message(MessageId(first_id_at(at) + n), f"d{days_ago}-{n}", UserId(1), 2, ChatType.FRIEND,
                    MessageType.TEXT, "x", None, at) for n in range(count)]
    store = SqliteMessages(str(path))
    try:
        store.save_messages([NewMessage(m, (UserId(2),)) for m in made])
    finally:
        store.close()
    return made


async def test_a_node_purges_what_is_past_retention_at_its_hour_and_counts_it(start_node, node_folder: Path) -> None:
    path = node_folder / "data" / "messages.db"
    seed(path, 10, 25)
    young = seed(path, 0, 3)
    with trio.fail_after(30):
        node = await start_node(extra={"message": {"retention-days": 7, "purge-hour": 0, "purge-batch": 10}})
        registry = node.ctx.metrics.registry
        while not registry.get_sample_value("vim_purge_last_run_timestamp_seconds"):
            await trio.sleep(0.05)  # the purge starts with the node (hour 0 has passed today)
    assert registry.get_sample_value("vim_purge_removed_total", {"kind": "messages"}) == 25
    assert registry.get_sample_value("vim_purge_last_duration_seconds") is not None
    remaining, _ = node.ctx.messages.history("f1-2", None, 100)
    assert remaining == young
