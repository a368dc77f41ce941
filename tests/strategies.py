"""Hypothesis strategies for client frames, shared by the codec fuzz and the live-node fuzz.

Values are chosen at the edges of what each field accepts (limits and their neighbours, lone
surrogates, integers beyond 64 bits, NaN, MessagePack-only types) so that parsers are reached
past their first check.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
from hypothesis import strategies as st

from vim_cluster.protocol.codec import CODES

FIELDS = [
    "rid", "cid", "chatId", "type", "messageType", "content", "extend", "username", "password",
    "name", "token", "client", "uuid", "ids", "timestamp", "id", "before", "limit", "groupId",
    "members",
]

# Text as it can arrive in a WebSocket text frame (valid Unicode), plus lone surrogates that
# JSON escapes can smuggle in.
any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
escaped_text = st.one_of(any_text, st.sampled_from(["\ud800", "a\udfffb", "\ud83d\ude00", "\ud83d"]))
id_like = st.one_of(
    st.integers(min_value=-(1 << 70), max_value=1 << 70).map(str),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=True, allow_infinity=True), escaped_text, id_like,
    st.sampled_from(["friend", "group", "text", "recalled", "web", "ping", "1", "0"]),
)
# Values at the edges of what the fields accept: limits, their neighbours, lone surrogates,
# values MessagePack carries and JSON does not.
EDGES: list[Any] = [
    "", "x" * 64, "x" * 65, "é" * 32, "é" * 33, "a" * 300, "\ud800", "c\udfff", "\ud83d\ude00",
    "0", "1", str((1 << 63) - 1), str(1 << 63), "-1", "01", " 1", "1.0", "١",
    0, 1, -1, (1 << 63) - 1, 1 << 63, 1 << 64, -(1 << 63) - 1, 1.0, float("nan"), float("inf"), True,
    [], ["1"], ["1"] * 1001, {}, {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {
        "k": {"l": {"m": {"n": {"o": {"p": {"q": 1}}}}}}}}}}}}}}}}},
    {"n": float("nan")}, {"n": 1 << 64}, {"s": "\ud800"}, {"\ud800": 1},
    b"bytes", {"b": b"x"}, {b"k": 1}, {"e": msgpack.ExtType(5, b"x")}, msgpack.ExtType(1, b""),
]
edges = st.sampled_from(EDGES)
json_values = st.recursive(
    st.one_of(scalars, edges),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(escaped_text, st.sampled_from(FIELDS)), children, max_size=6),
    ),
    max_leaves=30,
)
codes = st.one_of(st.sampled_from(sorted(CODES)), any_text, st.integers(), st.none())
frame_objects = st.fixed_dictionaries(
    {},
    optional={
        "code": codes,
        "message": st.one_of(
            st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8),
            json_values,
        ),
    },
)
# MessagePack can carry what JSON cannot: bytes, non-string keys, extension types.
msgpack_values = st.recursive(
    st.one_of(scalars, edges, st.binary(max_size=10), st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(any_text, st.binary(max_size=4), st.sampled_from(FIELDS)), children, max_size=5),
    ),
    max_leaves=20,
)
msgpack_frames = st.fixed_dictionaries(
    {},
    optional={
        "code": codes,
        "message": st.one_of(st.dictionaries(st.sampled_from(FIELDS), msgpack_values, max_size=8), msgpack_values),
    },
)


def to_json(value: Any) -> str | None:
    try:
        return json.dumps(value)
    except (ValueError, TypeError, RecursionError):
        return None


def to_msgpack(value: Any) -> bytes | None:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (ValueError, TypeError, OverflowError):
        return None


# A valid message per code: the fuzz overrides some of its fields, so every parser is reached.
VALID: dict[str, dict[str, Any]] = {
    "ping": {},
    "register": {"username": "alice", "password": "12345678", "name": "Alice"},
    "login": {"username": "alice", "password": "x"},
    "ready": {"token": "t", "client": "web", "uuid": "u"},
    "message": {"cid": "c", "chatId": "1", "type": "friend", "messageType": "text", "content": "hi",
                "extend": {"a": 1}},
    "received": {"ids": ["1"]},
    "read": {"chatId": "1", "type": "friend", "timestamp": 1},
    "recall": {"id": "1"},
    "history": {"chatId": "1", "type": "group", "before": "5", "limit": 10},
    "contacts": {},
    "group-create": {"name": "g", "members": ["1"]},
    "group-add": {"groupId": "1", "members": ["1"]},
    "group-remove": {"groupId": "1", "members": ["1"]},
}
