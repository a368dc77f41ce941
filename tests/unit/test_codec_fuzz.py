"""Property: whatever arrives, `decode` returns a Command or raises FrameError with a
documented kind, and a Command it returns can be stored and sent on in either encoding."""

from __future__ import annotations

import json
from typing import Any

import attrs
import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vim_cluster.errors import ErrorKind
from vim_cluster.protocol import frames as f
from vim_cluster.protocol.codec import CODES, FrameError, decode

DECODE_KINDS = {ErrorKind.BAD_FRAME, ErrorKind.UNKNOWN_CODE, ErrorKind.INVALID, ErrorKind.TOO_LARGE}
FIELDS = [
    "rid", "cid", "chatId", "type", "messageType", "content", "extend", "username", "password",
    "name", "token", "client", "uuid", "ids", "timestamp", "id", "before", "limit", "groupId",
    "members",
]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

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


def _to_json(value: Any) -> str | None:
    try:
        return json.dumps(value)
    except (ValueError, TypeError, RecursionError):
        return None


def _to_msgpack(value: Any) -> bytes | None:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (ValueError, TypeError, OverflowError):
        return None


def check(data: str | bytes) -> None:
    """The property itself."""
    try:
        command = decode(data, max_content=64)
    except FrameError as error:
        assert error.kind in DECODE_KINDS, error
        assert error.rid is None or (isinstance(error.rid, str) and len(error.rid) <= 64)
        assert error.cid is None or (isinstance(error.cid, str) and len(error.cid) <= 64)
        _encodable(error.reply())
        return
    assert isinstance(command, f.Command)
    _storable(command)


def _storable(command: f.Command) -> None:
    """Every string is UTF-8 text, `extend` round-trips through JSON and MessagePack."""
    for value in attrs.asdict(command, recurse=False).values():
        if isinstance(value, str):
            value.encode("utf-8")
    extend = getattr(command, "extend", None)
    if extend is not None:
        assert json.loads(json.dumps(extend, allow_nan=False)) == extend
        assert msgpack.unpackb(msgpack.packb(extend)) == extend
    if isinstance(command, f.SendMessage):
        assert len(command.content.encode("utf-8")) <= 64


def _encodable(reply: f.ErrorReply) -> None:
    json.dumps({"code": "error", "message": reply.wire()}, ensure_ascii=False).encode("utf-8")
    msgpack.packb(reply.wire())


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_fail_with_a_documented_kind(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_arbitrary_text_decodes_or_fails_with_a_documented_kind(data: str) -> None:
    check(data)


@FUZZ
@given(json_values)
def test_arbitrary_json_values_decode_or_fail_with_a_documented_kind(value: Any) -> None:
    text = _to_json(value)
    if text is not None:
        check(text)
    binary = _to_msgpack(value)
    if binary is not None:
        check(binary)


@FUZZ
@given(frame_objects)
def test_frame_shaped_json_decodes_or_fails_with_a_documented_kind(frame: dict[str, Any]) -> None:
    text = _to_json(frame)
    if text is not None:
        check(text)
    binary = _to_msgpack(frame)
    if binary is not None:
        check(binary)


@FUZZ
@given(msgpack_frames)
def test_frame_shaped_messagepack_decodes_or_fails_with_a_documented_kind(frame: dict[str, Any]) -> None:
    binary = _to_msgpack(frame)
    if binary is not None:
        check(binary)


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


def test_every_code_has_a_valid_template() -> None:
    assert set(VALID) == CODES
    for code, message in VALID.items():
        assert isinstance(decode(json.dumps({"code": code, "message": message})), f.Command)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_valid_frames_with_fields_replaced_decode_or_fail_with_rid_echoed(data: st.DataObject) -> None:
    code = data.draw(st.sampled_from(sorted(CODES)), label="code")
    fields = sorted(VALID[code]) or ["rid", "token"]
    values = st.one_of(edges, json_values, msgpack_values)
    changes = data.draw(st.dictionaries(st.sampled_from(fields), values, min_size=1, max_size=2), label="changes")
    message = {**VALID[code], "rid": "rid-1", **changes}
    frame = {"code": code, "message": message}
    for encoded in (_to_json(frame), _to_msgpack(frame)):
        if encoded is None:
            continue
        check(encoded)
        try:
            decode(encoded, max_content=64)
        except FrameError as error:
            if error.kind is not ErrorKind.BAD_FRAME and "rid" not in changes:
                assert error.rid == "rid-1"  # (a lone surrogate anywhere is bad-frame)
