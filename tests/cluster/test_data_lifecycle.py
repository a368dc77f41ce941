"""`vim-cluster user delete --erase`, `export` and `import` against a running 3-node cluster."""

from __future__ import annotations

import contextlib
import json
import secrets
from pathlib import Path

import trio

from ..support import connect, online, write_config
from .harness import Cluster, blocking, routes_on, run_cli


async def test_erase_closes_every_session_with_4006_voids_the_token_and_leaves_deleted_placeholders(
    cluster: Cluster,
) -> None:
    name, peer, away = (f"{who}-{secrets.token_hex(3)}" for who in ("gone", "peer", "away"))
    master_cfg = str(cluster.master.config)
    with trio.fail_after(90):
        async with contextlib.AsyncExitStack() as stack:
            web = await online(stack, cluster.dept1.url, name)
            pc = await online(stack, cluster.dept2.url, name, register=False, client="pc")
            bob = await online(stack, cluster.dept2.url, peer)
            async with connect(cluster.dept1.url) as carol:  # registered, then offline
                await carol.register_login(away)
                await carol.ready()
                carol_id = carol.user_id
            assert carol_id is not None and web.user_id is not None and bob.user_id is not None
            kept = await bob.chat(web.user_id, "bob's own words", "b-1")
            secret = await web.chat(bob.user_id, "my secret", "s-1")
            assert (await bob.expect("message"))["content"] == "my secret"
            waiting = await web.chat(carol_id, "for carol", "s-2")

            deleted = await blocking(run_cli, "user", "delete", name, "--erase", "--config", master_cfg)
            assert deleted.returncode == 0, deleted
            assert "account deleted" in deleted.stdout and "2 sent messages erased" in deleted.stdout
            assert (await web.expect_closed(10)).code == 4006
            assert (await pc.expect_closed(10)).code == 4006
            await bob.send("ping")  # everyone else stays
            assert "ts" in await bob.expect("pong")

            async with connect(cluster.dept1.url) as again:  # dept-1 had the user cached
                await again.send("ready", token=web.token, client="web")
                await again.expect_error("unauthorized")
            await bob.send("history", chatId=web.user_id, type="friend")
            page = (await bob.expect("history"))["messages"]
            assert [(m["id"], m["messageType"], m["content"]) for m in page] == [
                (kept["id"], "text", "bob's own words"), (secret["id"], "deleted", ""),
            ]
            async with connect(cluster.dept2.url) as carol:  # her offline message is a placeholder now
                await carol.login(away)
                replayed = await carol.ready()
                assert [(m["id"], m["messageType"], m["content"]) for m in replayed] == [(waiting["id"], "deleted", "")]
        assert routes_on(cluster.redis_url, web.user_id, "dept-1") == []

        left = await blocking(run_cli, "export", "--user", web.user_id, "--config", master_cfg)  # said: no such user
        assert left.returncode == 0 and "no account" in left.stderr, left
        assert [(m["id"], m["state"], m["content"]) for m in map(json.loads, left.stdout.splitlines()[1:])] == [
            (kept["id"], "live", "bob's own words"), (secret["id"], "deleted", ""), (waiting["id"], "deleted", "")]
        rerun = await blocking(run_cli, "user", "delete", web.user_id, "--erase", "--config", master_cfg)
        assert rerun.returncode == 0, rerun
        assert "already gone" in rerun.stdout and "2 sent messages erased" in rerun.stdout  # idempotent
        unknown = await blocking(run_cli, "user", "delete", name, "--config", master_cfg)
        assert unknown.returncode == 2 and "no such user" in unknown.stderr


async def test_export_then_import_into_another_store_is_identical_and_idempotent(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b = f"ex-{secrets.token_hex(3)}", f"im-{secrets.token_hex(3)}"
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, cluster.dept1.url, a)
            bob = await online(stack, cluster.dept2.url, b)
            assert bob.user_id is not None and alice.user_id is not None
            for i in range(5):
                await alice.chat(bob.user_id, f"line {i} ✓", f"x-{i}")
        out = tmp_path / "alice.jsonl"
        master_cfg = str(cluster.master.config)
        exported = await blocking(run_cli, "export", "--user", a, "--out", str(out), "--config", master_cfg)
        assert exported.returncode == 0, exported
        lines = out.read_text(encoding="utf-8").splitlines()
        assert json.loads(lines[0]) == {"format": "vim-cluster-messages", "version": 1}
        assert [json.loads(line)["content"] for line in lines[1:]] == [f"line {i} ✓" for i in range(5)]

        other = write_config(tmp_path / "other", redis_url=cluster.redis_url, store={
            "directory": "sqlite:data/directory.db", "messages": "sqlite:data/messages.db"})
        first = await blocking(run_cli, "import", str(out), "--config", str(other))
        second = await blocking(run_cli, "import", str(out), "--config", str(other))
        assert first.returncode == 0 and "5 created, 0 already there" in first.stdout, first
        assert second.returncode == 0 and "0 created, 5 already there" in second.stdout, second
        chat = f"f{min(int(alice.user_id), int(bob.user_id))}-{max(int(alice.user_id), int(bob.user_id))}"
        back = await blocking(run_cli, "export", "--chat", chat, "--config", str(other))
        assert back.returncode == 0 and back.stdout == out.read_text(encoding="utf-8")

        bad = await blocking(run_cli, "export", "--chat", "nonsense", "--config", master_cfg)
        assert bad.returncode == 2 and "--chat must be" in bad.stderr
        missing = await blocking(run_cli, "import", str(tmp_path / "nope.jsonl"), "--config", master_cfg)
        assert missing.returncode == 2 and "cannot read" in missing.stderr
