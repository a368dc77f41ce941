"""Malformed and hostile frames on the client port, in both encodings: bombs that aim at the
parser's memory or recursion, invalid Unicode, oversize frames and fields, and ids and rids
that are not what they claim."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import trio
from wsproto.events import CloseConnection

from ..cluster.harness import Cluster
from ..support import Client, connect, online
from .attack import RawSocket, frame_bytes, name, rss_kib, watch

# (frame, error kind) pairs: each is answered `error <kind>` and the connection stays open.
JSON_BOMBS: list[tuple[str, str]] = [
    ("[" * 30_000 + "]" * 30_000, "bad-frame"),  # nesting past the recursion limit
    ('{"code":"ping","message":{"rid":' + "9" * 30_000 + "}}", "bad-frame"),  # int over 4300 digits
    ('{"code":"ping","message":{"rid":1e999999}}', "invalid"),  # a float that is infinity
    ('{"code":"ping","message":{"rid":"\\ud800"}}', "bad-frame"),  # a lone surrogate
    ('{"code":"ping","message":{"rid":"a"},' + '"k":"v",' * 5000 + '"z":1}', "pong"),  # many keys: fine
    ('{"code":"' + "x" * 50_000 + '"}', "unknown-code"),
    ('{"code":["ping"]}', "bad-frame"),
    ('{"code":"ping","message":[1,2]}', "invalid"),
    ("null", "bad-frame"),
    ('{"code":"ping","message":{"rid":"' + "r" * 65 + '"}}', "invalid"),
]
MSGPACK_BOMBS: list[tuple[bytes, str]] = [
    (b"\xdf\xff\xff\xff\xff", "bad-frame"),  # a map announcing 2^32 entries
    (b"\xdd\xff\xff\xff\xff", "bad-frame"),  # an array announcing 2^32 items
    (b"\xc6\xff\xff\xff\xff" + b"x" * 10, "bad-frame"),  # bin32 announcing 4 GiB
    (b"\x91" * 20_000 + b"\xc0", "bad-frame"),  # 20,000 nested arrays
    (msgpack.packb({"code": "ping", "message": {"rid": b"bytes"}}), "invalid"),
    (b"\x82\xa4code\xa4ping\xa7message\x81\xa3rid\xa3\xff\xfe\xfd", "bad-frame"),  # str not UTF-8
    (msgpack.packb({"code": "ping", 1: 2}), "bad-frame"),  # non-string key
    (msgpack.packb(msgpack.ExtType(1, b"\x00" * 100)), "bad-frame"),
    (msgpack.packb({"code": "ping", "message": {"rid": "r"}}) + b"\xc0", "bad-frame"),  # trailing data
]


async def _answer(client: Client) -> str:
    frame = await client.next_frame()
    return frame["message"]["error"] if frame["code"] == "error" else frame["code"]


async def test_parser_bombs_in_json_and_msgpack_are_answered_and_the_connection_stays(cluster: Cluster) -> None:
    """Attack: JSON and MessagePack bombs: nesting past the recursion limit, a 30,000-digit
    integer, infinity, a lone surrogate, headers announcing 2^32 entries or a 4 GiB string,
    invalid UTF-8 inside MessagePack, extension types, trailing bytes; before and after
    authenticating. Defended: each is answered with an `error` of a documented kind (never
    `internal`), the same connection goes on working, other users are not slowed."""
    with trio.fail_after(30):
        async with watch(cluster, cluster.dept1), contextlib.AsyncExitStack() as stack:
            anonymous = await stack.enter_async_context(connect(cluster.dept1.url))
            ready = await online(stack, cluster.dept1.url, name("bomber"))
            for client in (anonymous, ready):
                for data, kind in JSON_BOMBS + MSGPACK_BOMBS:
                    await client.send_raw(data)
                    answer = await _answer(client)
                    assert answer == kind, (repr(data[:40]), answer)
                    client.binary = isinstance(data, bytes)
                    await client.send("ping", rid="alive")
                    assert (await client.expect("pong"))["rid"] == "alive"


async def test_invalid_utf8_in_a_text_frame_is_closed_with_1007_and_a_reason(cluster: Cluster) -> None:
    """Attack: a text frame whose bytes are not UTF-8 (RFC 6455 says the endpoint must fail
    the connection), before and after a valid frame. Defended: the node sends a close frame
    with code 1007 and a reason naming the problem (before the fix it dropped the TCP
    connection without one); the node and other users carry on."""
    with trio.fail_after(20):
        async with watch(cluster, cluster.dept2):
            for prefix in (b"", b'{"code":"ping"}'):
                raw = await RawSocket.open(cluster.dept2.port)
                try:
                    if prefix:
                        await raw.send_frame(0x1, prefix)
                    await raw.send_frame(0x1, b'{"code":"ping","message":{"rid":"\xff\xfe"}}')
                    close = await raw.close_frame()
                    assert isinstance(close, CloseConnection), close
                    assert close.code == 1007 and "UTF-8" in (close.reason or ""), close
                finally:
                    await raw.aclose()


async def test_protocol_violations_get_a_close_frame_not_a_silent_drop(cluster: Cluster) -> None:
    """Attack: WebSocket frames that break RFC 6455: a reserved opcode, an unmasked client
    frame, a fragmented control frame. Defended: each connection gets a close frame (1002)
    with a reason before the node ends it."""
    with trio.fail_after(20):
        async with watch(cluster, cluster.master):
            for frame in (b"\x83\x80abcd", b"\x81\x05hello", b"\x09\x80abcd"):
                raw = await RawSocket.open(cluster.master.port)
                try:
                    await raw.stream.send_all(frame)
                    close = await raw.close_frame()
                    assert isinstance(close, CloseConnection) and close.code == 1002, (frame, close)
                finally:
                    await raw.aclose()


async def test_oversize_frames_and_fields_are_refused(cluster: Cluster) -> None:
    """Attack: a frame over max-frame (64 KiB) as text and as binary, content over
    max-content, an `extend` of 60 KB (stored and fanned out like content), `extend` nested
    17 deep or holding 2^70, a 5,000-character cid. Defended: the oversize frames close with
    1009; the fields are answered `too-large` or `invalid`; nothing is stored or delivered."""
    with trio.fail_after(30):
        async with watch(cluster, cluster.dept1), contextlib.AsyncExitStack() as stack:
            sender = await online(stack, cluster.dept1.url, name("big"))
            peer = await online(stack, cluster.dept2.url, name("peer"))
            base = {"chatId": peer.user_id, "type": "friend", "messageType": "text", "content": "x"}
            deep: dict = {"v": 1}
            for _ in range(17):
                deep = {"d": deep}
            cases: list[tuple[dict[str, Any], str]] = [
                ({"content": "x" * 20_000}, "too-large"),
                ({"extend": {"blob": "y" * 60_000}}, "too-large"),
                ({"extend": deep}, "invalid"),
                ({"extend": {"n": 1 << 70}}, "invalid"),
                ({"cid": "c" * 5000}, "invalid")]
            for fields, kind in cases:
                await sender.send("message", **{"cid": "big-1", **base, **fields})
                await sender.expect_error(kind)
            await cluster.no_relayed_frame("message", [peer], cluster.dept1)  # the sender's node
            for binary in (False, True):
                async with connect(cluster.dept1.url, binary=binary) as client:
                    await client.send("ping", rid="z" * 70_000)
                    assert (await client.expect_closed()).code == 1009


async def test_a_message_in_endless_fragments_is_cut_off(cluster: Cluster) -> None:
    """Attack: before authenticating, start a text message and never finish it: 400,000
    empty continuation fragments (6 bytes each on the wire), then 70,000 one-byte ones. Each
    fragment used to be kept in a list without counting towards the frame limit (an empty one
    counts 0 bytes), so memory grew with the attacker's bandwidth. Defended: the node closes
    the connection with 1009 after max(1024, max-frame / 512) fragments, its memory does not
    grow with the attack, and other users stay fast."""
    node = cluster.dept2
    with trio.fail_after(40):
        async with watch(cluster, node):
            before = rss_kib(node.pid)
            for fragment, count in ((b"", 400_000), (b"x", 70_000)):
                raw = await RawSocket.open(node.port)
                try:
                    burst = frame_bytes(0x0, fragment, fin=False) * 1000
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await raw.send_frame(0x1, fragment, fin=False)
                        for _ in range(count // 1000):
                            await raw.stream.send_all(burst)
                    close = await raw.close_frame()
                    assert isinstance(close, CloseConnection) and close.code == 1009, close
                finally:
                    await raw.aclose()
            grown_mib = (rss_kib(node.pid) - before) / 1024
    print(f"endless fragments: {node.name} RSS grew {grown_mib:.1f} MiB")
    assert grown_mib < 8


async def _exchange(port: int, request: bytes) -> bytes:
    """Sends `request` on a fresh TCP connection; returns whatever comes back until the node
    closes it (the node must close it: the test's deadline says how soon)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    answer = b""
    try:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(request)
            while chunk := await stream.receive_some(65536):
                answer += chunk
    finally:
        await stream.aclose()
    return answer


async def test_hostile_http_handshakes_are_refused_on_every_port(cluster: Cluster) -> None:
    """Attack: on the client, forward and HTTP ports at once: a 100 KB URL, 100 KB of
    headers, a TLS hello on a plain port, a plain GET without the upgrade, a POST; and on the
    client port a WebSocket upgrade with a bad token (repeated 2,000 times) from a client that
    then never hangs up. Defended: each gets an HTTP error (the bad token 401; the TLS hello,
    never a whole request line, 408 at the 10 s deadline) and the node closes the connection at once (a rejected handshake used to stay open for as long as the
    client liked); the node and other users carry on."""
    node = cluster.master
    upgrade = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n")
    everywhere = [
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n" + upgrade + b"\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n" + upgrade + b"X-Pad: " + b"p" * 100_000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 500,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    ]
    bad_token = b"GET /?" + b"token=x&" * 2000 + b" HTTP/1.1\r\nHost: x\r\n" + upgrade + b"\r\n"
    answers: list[bytes] = []

    async def probe(port: int, request: bytes) -> None:
        answers.append(await _exchange(port, request))

    with trio.fail_after(20):
        async with watch(cluster, node):
            async with trio.open_nursery() as nursery:
                for port in (node.port, node.forward_port, node.http_port):
                    assert port is not None
                    for request in everywhere:
                        nursery.start_soon(probe, port, request)
                nursery.start_soon(probe, node.port, bad_token)
    assert len(answers) == 16
    assert not [a for a in answers if a.startswith(b"HTTP/1.1 101")]
    assert sum(a.startswith(b"HTTP/1.1 401") for a in answers) == 1
    # every one is answered (the HTTP port closed some silently): 400, 401, 408, 431, 405
    assert [a[:40] for a in answers if not a.startswith(b"HTTP/1.1 4")] == []
