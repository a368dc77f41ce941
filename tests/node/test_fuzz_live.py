"""Garbage sent to a live node (PROTOCOL.md §2.5: no input may crash a node or close other
clients' connections). Hypothesis generates the inputs in a synchronous collector; the async
test sends them over one ready connection, each followed by a `ping` barrier, and checks every
frame the node sends back."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgpack
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vim_cluster.node.app import RunningNode

from ..strategies import (
    VALID,
    any_text,
    edges,
    frame_objects,
    json_values,
    msgpack_frames,
    msgpack_values,
    to_json,
    to_msgpack,
)
from ..support import Client, make_group, online

EXAMPLES = 400
# What a node may send a client, and the error kinds a client can cause. `internal` (a crash)
# and `unavailable` (a store outage) are not among them.
REPLY_CODES = {
    "pong", "raw-pong", "error", "register-ok", "login-ok", "ready-ok", "sync-done", "ack", "message",
    "receipt", "read", "recall", "history", "contacts", "group-ok", "other-login", "presence",
}
CLIENT_ERRORS = {
    "bad-frame", "unknown-code", "invalid", "unauthorized", "forbidden", "not-found", "not-member",
    "conflict", "locked", "expired", "too-large", "rate-limited",
}


# What broke nodes before: strings that are not Unicode (echoed rid, stored cid), values that
# JSON or MessagePack cannot carry in `extend`, content beyond the limit in characters.
nasty = st.sampled_from([
    "\ud800", "x\udfff", {"b": b"bytes"}, {b"key": 1}, {"big": 1 << 64}, {"nan": float("nan")},
    {"deep": [[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]]}, "c" * 70_000,
])


def collect_inputs(ids: list[str]) -> list[str | bytes]:
    """Hypothesis-generated frames; `ids` are real user and group ids, so that some of the
    mutated frames get past the parsers into the handlers and the stores."""
    real_ids = st.sampled_from(ids)
    # The valid templates with real ids, then some fields replaced with edge values.
    templates = {code: {k: ([ids[0]] if isinstance(v, list) else v) for k, v in message.items()}
                 for code, message in VALID.items()}
    for message in templates.values():
        for key in ("chatId", "groupId", "id", "before"):
            if key in message:
                message[key] = ids[0]

    @st.composite
    def mutated(draw: st.DrawFn) -> dict[str, Any]:
        code = draw(st.sampled_from(sorted(templates)))
        message = dict(templates[code])
        fields = sorted(message) + ["rid", "extend"]
        values = st.one_of(real_ids, nasty, edges, json_values, msgpack_values, st.lists(real_ids, max_size=3))
        message.update(draw(st.dictionaries(st.sampled_from(fields), values, max_size=3)))
        if code == "message":
            message["cid"] = draw(st.one_of(st.just(message["cid"]), any_text))
        return {"code": code, "message": message}

    inputs = st.one_of(
        st.binary(max_size=64),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=64),
        frame_objects.map(to_json),
        msgpack_frames.map(to_msgpack),
        # mostly frames that reach the handlers
        mutated().map(to_json),
        mutated().map(to_json),
        mutated().map(to_json),
        mutated().map(to_msgpack),
        mutated().map(to_msgpack),
        st.just("ping"),
    ).filter(lambda data: data is not None and len(data) < 65_000)
    found: list[str | bytes] = []

    @settings(max_examples=EXAMPLES, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(inputs)
    def collect(data: str | bytes) -> None:
        found.append(data)

    collect()
    return found


def check_frame(frame: dict[str, Any], sent: str | bytes) -> None:
    assert frame["code"] in REPLY_CODES, (frame, sent)
    assert isinstance(frame["message"], dict), (frame, sent)
    if frame["code"] == "error":
        assert frame["message"]["error"] in CLIENT_ERRORS, (frame, sent)
        assert isinstance(frame["message"]["detail"], str), (frame, sent)


async def drain(client: Client, seen: list[dict[str, Any]]) -> None:
    """Reads a bystander's frames so its queue never fills while the fuzz runs."""
    while True:
        frame = await client.next_frame()
        check_frame(frame, b"(bystander)")
        seen.append(frame)


async def test_garbage_gets_documented_answers_and_other_clients_keep_working(start_node) -> None:
    with trio.fail_after(60):
        # The fuzz pipelines faster than 200 frames/s; the rate limit has its own test.
        node: RunningNode = await start_node(websocket={"rate-limit": 1_000_000})
        url = f"ws://127.0.0.1:{node.client_port}/"
        async with contextlib.AsyncExitStack() as stack:
            bystander = await online(stack, url, "bystander")
            fuzzer = await online(stack, url, "fuzzer")
            group_id = await make_group(fuzzer, [bystander], name="fuzzed")
            assert bystander.user_id is not None
            ack = await fuzzer.chat(bystander.user_id, "a message to recall", "fz-0")
            await bystander.expect("message")
            inputs = collect_inputs([bystander.user_id or "", group_id, ack["id"], fuzzer.user_id or ""])
            assert len(inputs) >= EXAMPLES // 2
            bystander_frames: list[dict[str, Any]] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, bystander, bystander_frames)
                for n, data in enumerate(inputs):
                    await fuzzer.send_raw(data)
                    barrier = f"barrier-{n}"
                    await fuzzer.send("ping", rid=barrier)
                    while True:  # every frame up to the barrier's pong answers `data`
                        frame = await fuzzer.next_frame()
                        check_frame(frame, data)
                        if frame["code"] == "pong" and frame["message"].get("rid") == barrier:
                            break
                assert not fuzzer.ws.closed, fuzzer.ws.closed
                nursery.cancel_scope.cancel()
            assert not bystander.ws.closed, bystander.ws.closed
            # The node still serves: the bystander still gets messages, a new client gets in.
            newcomer = await online(stack, url, "newcomer")
            sent = await newcomer.chat(bystander.user_id or "", "still alive?", "after-fuzz")
            assert (await bystander.expect("message"))["id"] == sent["id"]
            await fuzzer.send("history", chatId=group_id, type="group", rid="h")
            assert (await fuzzer.expect("history"))["rid"] == "h"


def test_the_collector_yields_every_kind_of_input() -> None:
    inputs = collect_inputs(["1", "2", "3", "4"])
    kinds = {type(i) for i in inputs}
    assert kinds == {str, bytes}
    decoded = []
    for data in inputs:
        with contextlib.suppress(ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
                                 RecursionError):
            decoded.append(json.loads(data) if isinstance(data, str) else msgpack.unpackb(data))
    codes = {d.get("code") for d in decoded if isinstance(d, dict) and isinstance(d.get("code"), str)}
    assert {"message", "group-create", "recall", "received"} <= codes
