"""Connection caps per source address (core/conn_caps.py, node/admission.py) against a flood
of half-open handshakes from one host, on a `vim-cluster run` node of its own: loopback is
exempt by default (tools and a proxy on the node's host), so this node counts it
(`vim.websocket.count-loopback`), and 127.0.0.2 attacks while 127.0.0.1 is the bystander."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import yaml

from vim_cluster.config import CAPS_DEFAULTS

from ..cluster.harness import ClusterNode, blocking
from ..servers import RedisServer, redis_process  # noqa: F401 - the fixture
from ..support import flush_redis, free_port, online, tcp_from, write_config
from .attack import name

pytestmark = pytest.mark.timeout(90)
FLOOD = CAPS_DEFAULTS.unauthenticated_per_address + 150
HALF_OPEN = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"  # and the rest never comes


@pytest.fixture
def capped(tmp_path: Path, redis_process: RedisServer) -> Iterator[ClusterNode]:  # noqa: F811
    """One master node process with the default caps, loopback counted, Redis of its own."""
    flush_redis(redis_process.url)
    http_port = free_port()
    config = write_config(tmp_path, node_id="capped", redis_url=redis_process.url,
                          websocket={"count-loopback": True}, extra={"http": {"port": http_port}})
    ports = yaml.safe_load(config.read_text())["vim"]["websocket"]
    node = ClusterNode("capped", config, ports["port"], http_port, ports["forward-port"])
    try:
        node.start()
        yield node
    finally:
        node.stop()
        node.kill()


async def test_a_flood_of_half_open_handshakes_from_one_address_leaves_other_addresses_served(
        capped: ClusterNode) -> None:
    """Attack: from one address, FLOOD TCP connections that each begin a WebSocket upgrade and
    never finish it (each would hold the node for the 10 s handshake deadline). Defended: the
    address gets max-unauthenticated-per-address (256) of them, every further one is refused at
    once (HTTP 429, or closed unanswered past the 64 refusals answered at a time), and meanwhile
    users from another address register, log in and exchange a message as usual."""
    node = capped
    refused: list[bytes] = []
    enough = trio.Event()
    with trio.fail_after(8):  # well inside the flood's handshake deadline (10 s): it still holds its slots
        async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:
            async def half_open() -> None:
                stream = await stack.enter_async_context(await tcp_from("127.0.0.2", node.port))
                await stream.send_all(HALF_OPEN)
                answer = b""
                with contextlib.suppress(trio.BrokenResourceError):  # a reset: closed unanswered
                    while chunk := await stream.receive_some(65536):
                        answer += chunk
                refused.append(answer)  # the node closed it before its deadline: refused
                if len(refused) == FLOOD - CAPS_DEFAULTS.unauthenticated_per_address:
                    enough.set()

            for _ in range(FLOOD):
                nursery.start_soon(half_open)
            await enough.wait()

            # The flood holds its address's slots: another connection from it is refused...
            async with await tcp_from("127.0.0.2", node.port) as more:
                await more.send_all(HALF_OPEN)
                try:
                    first = await more.receive_some(65536)
                except trio.BrokenResourceError:  # reset: closed unanswered
                    first = b""
                assert first == b"" or first.startswith(b"HTTP/1.1 429 "), first
            # ...and another address is served as usual.
            async with contextlib.AsyncExitStack() as users:
                alice = await online(users, node.url, name("alice"))
                bob = await online(users, node.url, name("bob"))
                assert bob.user_id
                await alice.chat(bob.user_id, "through the flood", cid="c1")
                assert (await bob.expect("message"))["content"] == "through the flood"
            nursery.cancel_scope.cancel()  # the flood's connections close with the stack

    answered = [a for a in refused if a]
    assert len(refused) == FLOOD - CAPS_DEFAULTS.unauthenticated_per_address
    assert answered, "no refusal was answered"
    for answer in answered:
        assert answer.startswith(b"HTTP/1.1 429 Too Many Requests\r\n") and b"\r\nRetry-After: 10\r\n" in answer
        assert answer.endswith(b"\r\n\r\nconnection limit: too many unauthenticated connections from this address "
                               b"(256); retry later\n")
    metrics = await blocking(node.metrics)
    counted = re.search(r'vim_connections_refused_total\{port="client",reason="pending"\} (\S+)', metrics)
    assert counted and float(counted.group(1)) >= len(refused) + 1  # with the one more
    print(f"half-open flood of {FLOOD} from one address: {len(refused)} refused ({len(answered)} answered 429), "
          f"the rest held; another address's users served")
