"""A node process killed with SIGKILL mid-traffic loses no acked message (PROTOCOL.md §2.2: the
ack comes only after the message is durably stored; §2.5: no input may lose an acked message)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from trio_websocket import ConnectionClosed

from ..support import Client, NodeProcess, connect, online, write_config

SENT = 300
KILL_AFTER_ACKS = 100

pytestmark = pytest.mark.slow


def client_port(config: Path) -> int:
    return int(yaml.safe_load(config.read_text())["vim"]["websocket"]["port"])


async def collect_acks(client: Client, acks: list[dict[str, Any]], enough: trio.Event) -> None:
    """Every ack the node sent before it died (the connection then breaks)."""
    try:
        while True:
            frame = await client.next_frame()
            if frame["code"] == "ack":
                acks.append(frame["message"])
                if len(acks) >= KILL_AFTER_ACKS:
                    enough.set()
            else:
                assert frame["code"] != "error", frame
    except ConnectionClosed:
        pass


async def test_acked_messages_survive_node_sigkill(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path, node_id="e2e-kill", redis_url=redis_url,
                          websocket={"rate-limit": 1_000_000})  # pipelined sends beat 200/s
    node = NodeProcess(config, client_port(config))
    try:
        with trio.fail_after(60):
            await trio.to_thread.run_sync(node.start)
            async with contextlib.AsyncExitStack() as stack:
                bob = await online(stack, node.url, "bob")  # online, never confirms
                alice = await online(stack, node.url, "alice")
                acks: list[dict[str, Any]] = []
                enough = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(collect_acks, alice, acks, enough)
                    with contextlib.suppress(ConnectionClosed):
                        for i in range(SENT):
                            await alice.send("message", cid=f"k-{i}", chatId=bob.user_id, type="friend",
                                             messageType="text", content=f"survives {i}")
                    await enough.wait()
                    await trio.to_thread.run_sync(node.kill)  # SIGKILL, mid-stream
                    assert node.process is not None and node.process.returncode == -9
                assert KILL_AFTER_ACKS <= len(acks) <= SENT
                assert [a["cid"] for a in acks] == [f"k-{i}" for i in range(len(acks))]

            # The same config, the same files, at once: the dead process's locks are taken over.
            await trio.to_thread.run_sync(node.start)
            async with contextlib.AsyncExitStack() as stack:
                alice = await online(stack, node.url, "alice", register=False)
                await alice.send("contacts")
                users = {u["userId"]: u for u in (await alice.expect("contacts"))["users"]}
                assert users[bob.user_id]["online"] is False  # the dead process's route is gone

                bob = await stack.enter_async_context(connect(node.url))
                await bob.login("bob")
                replayed = await bob.ready()
                replayed_ids = [m["id"] for m in replayed]
                missing = [a["cid"] for a in acks if a["id"] not in replayed_ids]
                assert not missing, f"acked before SIGKILL, lost: {missing}"
                assert len(set(replayed_ids)) == len(replayed_ids)
                assert replayed_ids == sorted(replayed_ids, key=int)  # oldest first
                by_id = {m["id"]: m for m in replayed}
                for ack in acks:
                    message = by_id[ack["id"]]
                    assert (message["cid"], message["timestamp"]) == (ack["cid"], ack["timestamp"])
                    assert message["content"] == f"survives {ack['cid'][2:]}"

                # the restarted node goes on: new messages and idempotent retries of old cids
                assert bob.user_id is not None
                again = await alice.chat(bob.user_id, "survives 0", "k-0")
                assert again == {k: v for k, v in acks[0].items() if k != "rid"}
                # a retried cid stores nothing new and delivers the stored message again (the
                # first try may have died before it was delivered): bob drops it by id
                assert (await bob.expect("message"))["id"] == acks[0]["id"]
                fresh = await alice.chat(bob.user_id, "after the restart", "after")
                assert (await bob.expect("message"))["id"] == fresh["id"]
    finally:
        node.kill()
