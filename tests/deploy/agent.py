"""Programs the multi-host test runs *on* a host (inside its namespace, with its /etc/hosts).

    ip netns exec NS python -m tests.deploy.agent SCENARIO 'JSON PARAMS'

Each reports what it saw as JSON lines on stdout (`{"step": ..., ...}`) and, where the test
must act in between (kick a user, cut a link), waits for a line on stdin. A failed check is
an AssertionError: a traceback on stderr and exit status 1. TLS: the process trusts the CA
named by SSL_CERT_FILE (OpenSSL's default-paths variable), so wss:// and https:// URLs verify
the nodes' certificates by hostname.

Scenarios:
- flows: register/login/ready on every node; friend and group chat across departments;
  offline replay on another node; a user waiting to be kicked by the operator.
- numbered: senders send numbered messages at a steady pace until stdin says "stop"; reports
  every ack and every delivery (for the link-cut check).
- healthz: polls a /healthz URL and reports each change of (status, checks).
"""

from __future__ import annotations

import contextlib
import json
import math
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import trio
from trio_websocket import ConnectionClosed

from ..support import Client, connect, no_relayed_frame, online


def report(step: str, **data: Any) -> None:
    print(json.dumps({"step": step, **data}), flush=True)


async def wait_for_line(expected: str) -> None:
    """Blocks until the test writes `expected` on stdin (EOF: the test is gone, stop)."""
    stdin = trio.wrap_file(sys.stdin)
    while True:
        line = await stdin.readline()
        if not line:
            raise SystemExit("stdin closed before the test said " + expected)
        if line.strip() == expected:
            return


# --- flows ------------------------------------------------------------------------------------


async def flows(urls: dict[str, str], prefix: str) -> None:
    """urls: node -> client URL (master, dept-1, dept-2)."""
    async with contextlib.AsyncExitStack() as stack:
        # register / login / ready on every node
        users = {node: await online(stack, url, f"{prefix}-{node}") for node, url in urls.items()}
        report("ready", users={node: c.user_id for node, c in users.items()})
        alice, bob, carol = users["dept-1"], users["dept-2"], users["master"]

        # friend chat across departments, both ways
        assert bob.user_id is not None
        ack = await alice.chat(bob.user_id, "hello dept-2", "f-1")
        got = await bob.expect("message", timeout=10)
        assert (got["id"], got["fromId"], got["content"]) == (ack["id"], alice.user_id, "hello dept-2"), got
        assert alice.user_id is not None
        back = await bob.chat(alice.user_id, "hello dept-1", "f-2")
        got_back = await alice.expect("message", timeout=10)
        assert got_back["id"] == back["id"] and got_back["content"] == "hello dept-1", got_back
        report("friend", ids=[ack["id"], back["id"]])

        # group chat: members on all three nodes, each gets the message exactly once
        await alice.send("group-create", name="across", members=[bob.user_id, carol.user_id])
        group_id = (await alice.expect("group-ok", timeout=10))["groupId"]
        for member in (bob, carol):
            assert (await member.expect("group-ok", timeout=10))["groupId"] == group_id
        g = await carol.chat(group_id, "hello group", "g-1", chat_type="group")
        for member in (alice, bob):
            got = await member.expect("message", timeout=10)
            assert got["id"] == g["id"] and got["chatId"] == group_id and got["type"] == "group", got
        # exactly once: nothing more from carol's node (the master) reached anyone
        await no_relayed_frame("message", [alice, bob, carol], [urls["master"]], urls["master"])
        report("group", group_id=group_id, id=g["id"])

        # offline replay: dave registers on dept-2, goes away, gets 3 messages, comes back on dept-1
        dave_name = f"{prefix}-dave"
        async with connect(urls["dept-2"]) as dave:
            await dave.register_login(dave_name)
            await dave.ready()
            dave_id = dave.user_id
        assert dave_id is not None
        acks = [await carol.chat(dave_id, f"offline {i}", f"o-{i}") for i in range(3)]
        async with connect(urls["dept-1"]) as dave_again:
            await dave_again.login(dave_name)
            replayed = await dave_again.ready()
        assert [m["id"] for m in replayed] == [a["id"] for a in acks], replayed
        assert all(m["offline"] is True for m in replayed), replayed
        report("offline", replayed=[m["id"] for m in replayed])

        # kick: erin waits on dept-2 (and her pc on dept-1) until the operator kicks her
        erin_name = f"{prefix}-erin"
        erin = await online(stack, urls["dept-2"], erin_name)
        erin_pc = await online(stack, urls["dept-1"], erin_name, register=False, client="pc")
        report("kick-ready", user=erin_name, user_id=erin.user_id)
        codes = [(await erin.expect_closed(90)).code, (await erin_pc.expect_closed(10)).code]
        await alice.send("ping")  # the kicked user's nodes keep serving the others
        assert "ts" in await alice.expect("pong")
        report("kicked", codes=codes)


# --- numbered senders -------------------------------------------------------------------------


WARM_ACKS = 5


class Sender:
    """Sends `content = n` every `interval` seconds, not waiting for acks; records acks/errors."""

    def __init__(self, client: Client, to: str, tag: str, interval: float) -> None:
        self.client, self.to, self.tag, self.interval = client, to, tag, interval
        self.sent = 0
        self.acks: dict[str, str] = {}  # cid -> message id
        self.errors: list[dict[str, Any]] = []
        self.closed: int | None = None

    async def send(self, stop: trio.Event) -> None:
        next_at = trio.current_time()
        with contextlib.suppress(ConnectionClosed):
            while not stop.is_set():
                await self.client.send("message", cid=f"{self.tag}-{self.sent}", chatId=self.to, type="friend",
                                       messageType="text", content=str(self.sent))
                self.sent += 1
                next_at += self.interval
                with trio.move_on_at(next_at):
                    await stop.wait()

    async def read_acks(self) -> None:
        try:
            while True:
                frame = await self.client.next_frame()
                if frame["code"] == "ack":
                    self.acks[frame["message"]["cid"]] = frame["message"]["id"]
                elif frame["code"] == "error":
                    self.errors.append(frame["message"])
        except ConnectionClosed as exc:
            self.closed = exc.reason.code if exc.reason else -1


class Recipient:
    """Records every message frame (duplicates included) in arrival order; confirms them."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.frames: list[tuple[str, str]] = []  # (cid, id), arrival order
        self.closed: int | None = None
        self.changed = trio.Event()

    async def run(self) -> None:
        try:
            while True:
                frame = await self.client.next_frame()
                if frame["code"] != "message":
                    continue
                message = frame["message"]
                self.frames.append((message["cid"], message["id"]))
                await self.client.send("received", ids=[message["id"]])
                self.changed.set()
                self.changed = trio.Event()
        except ConnectionClosed as exc:
            self.closed = exc.reason.code if exc.reason else -1
            self.changed.set()

    async def wait_for(self, ids: set[str], timeout: float) -> None:
        with trio.move_on_after(timeout):
            while not ids <= {i for _, i in self.frames} and self.closed is None:
                await self.changed.wait()


async def numbered(pairs: list[dict[str, str]], prefix: str, interval: float, drain_s: float) -> None:
    """pairs: [{"tag", "from": sender URL, "to": recipient URL}]; each sender writes to its own
    recipient. After stdin says "stop": waits (at most drain_s) until every acked message
    arrived, then reports everything."""
    async with contextlib.AsyncExitStack() as stack:
        senders, recipients = [], []
        for pair in pairs:
            recipient = Recipient(await online(stack, pair["to"], f"{prefix}-{pair['tag']}-to"))
            sender = Sender(await online(stack, pair["from"], f"{prefix}-{pair['tag']}-from"),
                            recipient.client.user_id or "", pair["tag"], interval)
            senders.append(sender)
            recipients.append(recipient)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for sender, recipient in zip(senders, recipients, strict=True):
                nursery.start_soon(recipient.run)
                nursery.start_soon(sender.read_acks)
            async with trio.open_nursery() as sending:
                for sender in senders:
                    sending.start_soon(sender.send, stop)
                while any(len(s.acks) < WARM_ACKS for s in senders):  # every path works: go
                    await trio.sleep(0.05)
                report("sending", acked={s.tag: len(s.acks) for s in senders})
                await wait_for_line("stop")
                stop.set()
            # every sender stopped: wait for the acks still in flight, then for the deliveries
            with trio.move_on_after(drain_s):
                while any(len(s.acks) + len(s.errors) < s.sent and s.closed is None for s in senders):
                    await trio.sleep(0.05)
            for sender, recipient in zip(senders, recipients, strict=True):
                await recipient.wait_for(set(sender.acks.values()), drain_s)
            nursery.cancel_scope.cancel()
        for sender, recipient in zip(senders, recipients, strict=True):
            report("numbered", tag=sender.tag, sent=sender.sent, acks=sender.acks, errors=sender.errors,
                   sender_closed=sender.closed, frames=recipient.frames, recipient_closed=recipient.closed)


# --- healthz ----------------------------------------------------------------------------------


def get_health(url: str, timeout: float) -> tuple[int | None, Any]:
    context = ssl.create_default_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, json.loads(body) if body.startswith(b"{") else body.decode(errors="replace")
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def healthz(url: str, interval: float) -> None:
    """Polls `url` until killed; reports (status, checks) whenever it changes."""
    last: object = math.nan
    while True:
        status, body = get_health(url, timeout=10)
        checks = body.get("checks") if isinstance(body, dict) else body
        if (status, checks) != last:
            report("healthz", status=status, checks=checks, at=time.time())
            last = (status, checks)
        time.sleep(interval)


def main(argv: list[str]) -> int:
    scenario, params = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    if scenario == "healthz":
        healthz(**params)
    elif scenario == "flows":
        trio.run(lambda: flows(**params))
    elif scenario == "numbered":
        trio.run(lambda: numbered(**params))
    else:
        print(f"unknown scenario {scenario!r} (flows, numbered, healthz)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
