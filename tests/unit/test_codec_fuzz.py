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

from ..strategies import (
    VALID,
    edges,
    frame_objects,
    json_values,
    msgpack_frames,
    msgpack_values,
    to_json,
    to_msgpack,
)

DECODE_KINDS = {ErrorKind.BAD_FRAME, ErrorKind.UNKNOWN_CODE, ErrorKind.INVALID, ErrorKind.TOO_LARGE}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
    text = to_json(value)
    if text is not None:
        check(text)
    binary = to_msgpack(value)
    if binary is not None:
        check(binary)


@FUZZ
@given(frame_objects)
def test_frame_shaped_json_decodes_or_fails_with_a_documented_kind(frame: dict[str, Any]) -> None:
    text = to_json(frame)
    if text is not None:
        check(text)
    binary = to_msgpack(frame)
    if binary is not None:
        check(binary)


@FUZZ
@given(msgpack_frames)
def test_frame_shaped_messagepack_decodes_or_fails_with_a_documented_kind(frame: dict[str, Any]) -> None:
    binary = to_msgpack(frame)
    if binary is not None:
        check(binary)


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
    for encoded in (to_json(frame), to_msgpack(frame)):
        if encoded is None:
            continue
        check(encoded)
        try:
            decode(encoded, max_content=64)
        except FrameError as error:
            if error.kind is not ErrorKind.BAD_FRAME and "rid" not in changes:
                assert error.rid == "rid-1"  # (a lone surrogate anywhere is bad-frame)
