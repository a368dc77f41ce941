"""The client codec without sockets: every command decodes, every reply encodes, and every
malformed input maps to its documented error kind (PROTOCOL.md §1, §2, §2.5)."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from vim_cluster.core.presence import Change
from vim_cluster.errors import ErrorKind
from vim_cluster.model import (
    ChatType,
    Department,
    Group,
    GroupId,
    Message,
    MessageId,
    MessageType,
    UserId,
)
from vim_cluster.protocol import frames as f
from vim_cluster.protocol.codec import FrameError, OutFrame, decode, encode

MAX_CONTENT = 16384


def as_text(code: str, message: Any = None) -> str:
    frame: dict[str, Any] = {"code": code}
    if message is not None:
        frame["message"] = message
    return json.dumps(frame)


def as_binary(code: str, message: Any = None) -> bytes:
    frame: dict[str, Any] = {"code": code}
    if message is not None:
        frame["message"] = message
    return msgpack.packb(frame, use_bin_type=True)


def both(code: str, message: Any = None) -> list[str | bytes]:
    return [as_text(code, message), as_binary(code, message)]


def decode_error(data: str | bytes, max_content: int = MAX_CONTENT) -> FrameError:
    with pytest.raises(FrameError) as caught:
        decode(data, max_content=max_content)
    return caught.value


SEND = {"cid": "c-1", "chatId": "42", "type": "friend", "messageType": "text", "content": "hi"}

# (code, message, the command it decodes to)
COMMANDS: list[tuple[str, dict[str, Any], f.Command]] = [
    ("ping", {}, f.Ping()),
    ("ping", {"rid": "r1"}, f.Ping(rid="r1")),
    ("register", {"username": "alice", "password": "12345678"}, f.Register("alice", "12345678", None)),
    (
        "register",
        {"username": "a.b_c-9", "password": "p" * 8, "name": "Alice", "rid": "r"},
        f.Register("a.b_c-9", "p" * 8, "Alice", rid="r"),
    ),
    ("login", {"username": "alice", "password": "x"}, f.Login("alice", "x")),
    ("ready", {"token": "t"}, f.Ready("t", "web", None)),
    ("ready", {"token": "t", "client": "android", "uuid": "u-1"}, f.Ready("t", "android", "u-1")),
    ("ready", {}, f.Ready(None, "web", None)),
    ("message", SEND, f.SendMessage("c-1", 42, ChatType.FRIEND, MessageType.TEXT, "hi", None)),
    (
        "message",
        {**SEND, "type": "group", "messageType": "image", "extend": {"w": 10, "tags": ["a"]}, "rid": "r"},
        f.SendMessage("c-1", 42, ChatType.GROUP, MessageType.IMAGE, "hi", {"w": 10, "tags": ["a"]}, rid="r"),
    ),
    ("received", {"ids": ["1", "2", 3]}, f.Received((1, 2, 3))),
    ("received", {"ids": []}, f.Received(())),
    ("read", {"chatId": "7", "type": "friend", "timestamp": 123}, f.Read(7, ChatType.FRIEND, 123)),
    ("recall", {"id": "99"}, f.Recall(99)),
    ("history", {"chatId": "7", "type": "group"}, f.History(7, ChatType.GROUP, None, 50)),
    (
        "history",
        {"chatId": "7", "type": "friend", "before": "100", "limit": 100},
        f.History(7, ChatType.FRIEND, 100, 100),
    ),
    ("contacts", {}, f.Contacts()),
    ("group-create", {"name": "team", "members": ["2", "3"]}, f.GroupCreate("team", (2, 3))),
    ("group-add", {"groupId": "5", "members": ["2"]}, f.GroupAdd(5, (2,))),
    ("group-remove", {"groupId": "5", "members": ["2"]}, f.GroupRemove(5, (2,))),
]


@pytest.mark.parametrize(("code", "message", "command"), COMMANDS, ids=[f"{c[0]}-{i}" for i, c in enumerate(COMMANDS)])
def test_every_command_decodes_from_json_text_and_messagepack(code: str, message: dict, command: f.Command) -> None:
    assert decode(as_text(code, message)) == command
    assert decode(as_binary(code, message)) == command


def test_every_message_type_but_recalled_and_deleted_is_sendable() -> None:
    for message_type in MessageType:
        data = as_text("message", {**SEND, "messageType": message_type.value})
        if message_type in (MessageType.RECALLED, MessageType.DELETED):
            error = decode_error(data)
            assert error.kind is ErrorKind.INVALID and error.cid == "c-1"
        else:
            assert decode(data).message_type is message_type  # type: ignore[attr-defined]


def test_frame_without_message_object_decodes_as_empty_message() -> None:
    assert decode('{"code":"contacts"}') == f.Contacts()
    assert decode('{"code":"ping","message":null}') == f.Ping()


def test_raw_ping_text_frame_decodes_to_raw_ping_and_raw_pong_encodes_to_pong() -> None:
    assert decode("ping") == f.RawPing()
    assert encode(f.RawPong(), binary=False) == "pong"
    assert encode(f.RawPong(), binary=True) == "pong"


def test_binary_ping_bytes_are_not_the_raw_ping() -> None:
    assert decode_error(b"ping").kind is ErrorKind.BAD_FRAME


# ------------------------------------------------------------------------------ replies

MESSAGE = Message(
    id=MessageId(1001),
    cid="c-1",
    from_id=UserId(11),
    chat_id=22,
    chat_type=ChatType.FRIEND,
    message_type=MessageType.TEXT,
    content="héllo",
    extend={"k": [1, "v"]},
    timestamp=1_700_000_000_123,
)
MESSAGE_WIRE = {
    "id": "1001",
    "cid": "c-1",
    "chatId": "22",
    "type": "friend",
    "messageType": "text",
    "content": "héllo",
    "extend": {"k": [1, "v"]},
    "fromId": "11",
    "timestamp": 1_700_000_000_123,
}
GROUP = Group(GroupId(500), "team", UserId(11), (UserId(11), UserId(22)))
GROUP_WIRE = {"groupId": "500", "name": "team", "members": ["11", "22"]}

# (reply, code, the wire message it must hold; extra keys allowed only where listed)
REPLIES: list[tuple[f.Reply, str, dict[str, Any]]] = [
    (f.Pong(123, rid="r"), "pong", {"ts": 123, "rid": "r"}),
    (f.ErrorReply(ErrorKind.INVALID, "bad", rid="r", cid="c"), "error",
     {"error": "invalid", "detail": "bad", "rid": "r", "cid": "c"}),
    (f.ErrorReply(ErrorKind.RATE_LIMITED, "slow down"), "error", {"error": "rate-limited", "detail": "slow down"}),
    (f.RegisterOk(11, rid="r"), "register-ok", {"userId": "11", "rid": "r"}),
    (f.LoginOk(11, "tok", 99, rid="r"), "login-ok", {"userId": "11", "token": "tok", "expiresAt": 99, "rid": "r"}),
    (f.ReadyOk(11, "node-1", 5), "ready-ok", {"userId": "11", "nodeId": "node-1", "serverTime": 5}),
    (f.SyncDone(3), "sync-done", {"count": 3}),
    (f.Ack("c-1", 1001, 7, rid="r"), "ack", {"cid": "c-1", "id": "1001", "timestamp": 7, "rid": "r"}),
    (f.MessageOut(MESSAGE), "message", MESSAGE_WIRE),
    (f.MessageOut(MESSAGE, offline=True), "message", {**MESSAGE_WIRE, "offline": True}),
    (f.Receipt(1001, 22, by=22), "receipt", {"id": "1001", "chatId": "22", "status": "delivered", "by": "22"}),
    (f.ReadOut(22, ChatType.FRIEND, 8, by=22), "read", {"chatId": "22", "type": "friend", "timestamp": 8, "by": "22"}),
    (f.RecallOut(1001, 22, ChatType.FRIEND, by=11), "recall", {"id": "1001", "chatId": "22", "type": "friend", "by": "11"}),
    (f.HistoryOut(22, ChatType.FRIEND, (MESSAGE,), True, rid="r"), "history",
     {"chatId": "22", "type": "friend", "messages": [MESSAGE_WIRE], "more": True, "rid": "r"}),
    (f.ContactsOut((f.ContactUser(22, "Bob", True),), (GROUP,)), "contacts",
     {"users": [{"userId": "22", "name": "Bob", "online": True, "deptId": None, "unread": 0}],
      "groups": [{**GROUP_WIRE, "unread": 0}], "departments": []}),
    (f.ContactsOut((f.ContactUser(22, "Bob", False, 5, unread=3),), (GROUP,), group_unread={GROUP.id: 2},
                   departments=(Department(4, "R&D"), Department(5, "Backend", 4)), members={5: (22,)}), "contacts",
     {"users": [{"userId": "22", "name": "Bob", "online": False, "deptId": "5", "unread": 3}],
      "groups": [{**GROUP_WIRE, "unread": 2}],
      "departments": [{"deptId": "4", "name": "R&D", "parentId": None, "members": []},
                      {"deptId": "5", "name": "Backend", "parentId": "4", "members": ["22"]}]}),
    (f.HistoryOut(22, ChatType.FRIEND, (MESSAGE,), False, statuses={MESSAGE.id: "read"}), "history",
     {"chatId": "22", "type": "friend", "messages": [{**MESSAGE_WIRE, "status": "read"}], "more": False}),
    (f.HistoryOut(22, ChatType.GROUP, (MESSAGE,), False, read_counts={MESSAGE.id: 2}), "history",
     {"chatId": "22", "type": "group", "messages": [{**MESSAGE_WIRE, "readCount": 2}], "more": False}),
    (f.PresenceOut((Change(22, True, "dept-1"),)), "presence", {"userId": "22", "online": True, "nodeId": "dept-1"}),
    (f.GroupOk(GROUP, rid="r"), "group-ok", {**GROUP_WIRE, "rid": "r"}),
    (f.OtherLogin("u-2", "node-1"), "other-login", {"uuid": "u-2", "nodeId": "node-1"}),
    # a frame relayed from another node, already in wire form, goes out as it came
    (f.RawReply({"code": "message", "message": MESSAGE_WIRE}), "message", MESSAGE_WIRE),
    (f.RawReply({"code": "receipt", "message": {"id": "1", "chatId": "2", "status": "delivered", "by": "2"}}),
     "receipt", {"id": "1", "chatId": "2", "status": "delivered", "by": "2"}),
]


def _without_extras(message: dict[str, Any]) -> dict[str, Any]:
    """Group frames may carry `owner` beyond the contract's fields."""
    out = dict(message)
    out.pop("owner", None)
    for group in out.get("groups", []):
        group.pop("owner", None)
    return out


@pytest.mark.parametrize(("reply", "code", "wire"), REPLIES, ids=[f"{r[1]}-{i}" for i, r in enumerate(REPLIES)])
def test_every_reply_encodes_to_json_text_and_messagepack(reply: f.Reply, code: str, wire: dict) -> None:
    text = encode(reply, binary=False)
    binary = encode(reply, binary=True)
    assert isinstance(text, str) and isinstance(binary, bytes)
    for frame in (json.loads(text), msgpack.unpackb(binary)):
        assert set(frame) == {"code", "message"}
        assert frame["code"] == code
        assert _without_extras(frame["message"]) == wire


def test_message_frames_name_their_message_id_and_others_none() -> None:
    assert f.MessageOut(MESSAGE).message_id() == 1001
    assert f.RawReply({"code": "message", "message": MESSAGE_WIRE}).message_id() == 1001
    assert f.RawReply({"code": "recall", "message": {"id": "1001"}}).message_id() is None
    assert f.Ack("c", 1001, 1).message_id() is None


def test_json_replies_are_utf8_text_not_ascii_escapes() -> None:
    assert "héllo" in encode(f.MessageOut(MESSAGE), binary=False)


def test_out_frame_encodes_each_mode_once_and_matches_encode() -> None:
    frame = OutFrame(f.MessageOut(MESSAGE))
    assert frame.encoded(False) is frame.encoded(False)
    assert frame.encoded(True) is frame.encoded(True)
    assert frame.encoded(False) == encode(frame.reply, False)
    assert frame.encoded(True) == encode(frame.reply, True)


# ------------------------------------------------------------------------------ malformed

BAD_FRAMES: list[str | bytes] = [
    "",
    "pong",
    "pingx",
    "{",
    "not json",
    "[1, 2]",
    '"a string"',
    "42",
    "null",
    "{}",
    '{"message": {}}',
    '{"code": 5}',
    '{"code": null}',
    '{"code": ["ping"]}',
    "[" * 100_000,
    '{"code":"ping","message":{"rid":"\\ud800"}}',  # a lone surrogate is not Unicode
    '{"code":"message","message":{"cid":"\\udfff"}}',
    b"",
    b"\xc1",
    b"\x92\x01\x02",  # a MessagePack array
    msgpack.packb("ping"),
    msgpack.packb({"message": {}}),
    msgpack.packb({"code": 1}),
    msgpack.packb({"code": b"ping"}),  # bytes, not a string
    msgpack.packb({"code": "ping"}) + b"\x00",  # trailing data
    msgpack.packb({(1,): 2}),  # a map key that is not a string
    b"\xff" * 10,
    b"\x91" * 10_000,  # nested deeper than MessagePack allows
]


@pytest.mark.parametrize("data", BAD_FRAMES, ids=range(len(BAD_FRAMES)))
def test_input_that_is_not_a_frame_object_is_bad_frame(data: str | bytes) -> None:
    assert decode_error(data).kind is ErrorKind.BAD_FRAME


def test_valid_surrogate_pairs_are_accepted() -> None:
    command = decode('{"code":"ping","message":{"rid":"\\ud83d\\ude00"}}')
    assert command.rid == "\U0001f600"
    # An escaped backslash before "ud800" is not a surrogate escape.
    assert decode('{"code":"ping","message":{"rid":"\\\\ud800"}}').rid == "\\ud800"


@pytest.mark.parametrize("data", both("no-such-code", {"rid": "r-7"}) + both("Ping", {"rid": "r-7"}))
def test_unknown_code_is_unknown_code_with_rid_echoed(data: str | bytes) -> None:
    error = decode_error(data)
    assert error.kind is ErrorKind.UNKNOWN_CODE
    assert error.rid == "r-7"
    assert error.reply().wire()["rid"] == "r-7"


def test_unknown_code_without_message_object_is_still_unknown_code() -> None:
    assert decode_error('{"code":"nope","message":[1]}').kind is ErrorKind.UNKNOWN_CODE


# (code, message) pairs that must be `invalid`; rid "r" is echoed in each.
INVALID: list[tuple[str, Any]] = [
    ("ping", [1]),
    ("ping", "text"),
    ("register", {"password": "12345678"}),
    ("register", {"username": "al", "password": "12345678"}),
    ("register", {"username": "a" * 33, "password": "12345678"}),
    ("register", {"username": "has space", "password": "12345678"}),
    ("register", {"username": "ünïcode", "password": "12345678"}),
    ("register", {"username": "alice", "password": "1234567"}),
    ("register", {"username": "alice", "password": 12345678}),
    ("register", {"username": "alice", "password": "12345678", "name": ""}),
    ("login", {"username": "alice"}),
    ("login", {"username": 1, "password": "x"}),
    ("ready", {"token": 5}),
    ("ready", {"token": "t", "client": ""}),
    ("ready", {"token": "t", "uuid": "u" * 65}),
    ("received", {}),
    ("received", {"ids": "1"}),
    ("received", {"ids": ["x"]}),
    ("received", {"ids": ["1"] * 1001}),
    ("read", {"chatId": "7", "type": "friend"}),
    ("read", {"chatId": "7", "type": "friend", "timestamp": 1.5}),
    ("read", {"chatId": "7", "type": "friend", "timestamp": -1}),
    ("read", {"chatId": "7", "type": "friend", "timestamp": True}),
    ("read", {"chatId": "7", "type": "channel", "timestamp": 1}),
    ("recall", {}),
    ("recall", {"id": "0"}),
    ("recall", {"id": "-5"}),
    ("recall", {"id": "1e3"}),
    ("recall", {"id": True}),
    ("recall", {"id": 1.0}),
    ("recall", {"id": str(1 << 63)}),
    ("recall", {"id": "٣"}),  # a non-ASCII digit
    ("history", {"type": "friend"}),
    ("history", {"chatId": "7", "type": "friend", "limit": 0}),
    ("history", {"chatId": "7", "type": "friend", "limit": 101}),
    ("history", {"chatId": "7", "type": "friend", "limit": "10"}),
    ("history", {"chatId": "7", "type": "friend", "before": "x"}),
    ("group-create", {"members": []}),
    ("group-create", {"name": "", "members": []}),
    ("group-create", {"name": "n" * 65, "members": []}),
    ("group-create", {"name": "team"}),
    ("group-create", {"name": "team", "members": "2"}),
    ("group-add", {"members": ["2"]}),
    ("group-add", {"groupId": "5"}),
    ("group-remove", {"groupId": "x", "members": ["2"]}),
]


@pytest.mark.parametrize(("code", "message"), INVALID, ids=[f"{c}-{i}" for i, (c, _) in enumerate(INVALID)])
def test_malformed_fields_are_invalid_with_rid_echoed(code: str, message: Any) -> None:
    if isinstance(message, dict):
        message = {**message, "rid": "r"}
    for data in both(code, message):
        error = decode_error(data)
        assert error.kind is ErrorKind.INVALID, error
        if isinstance(message, dict):
            assert error.rid == "r"
        assert error.detail.startswith(code)


@pytest.mark.parametrize("rid", [5, "r" * 65, ["r"], {"r": 1}])
def test_a_malformed_rid_is_invalid_and_not_echoed(rid: Any) -> None:
    error = decode_error(as_text("ping", {"rid": rid}))
    assert error.kind is ErrorKind.INVALID and error.rid is None


# message fields that are `invalid`, each with the cid (and rid) echoed
INVALID_SEND: list[dict[str, Any]] = [
    {"chatId": None},
    {"chatId": "abc"},
    {"chatId": "0"},
    {"chatId": ""},
    {"type": None},
    {"type": "channel"},
    {"messageType": None},
    {"messageType": "recalled"},
    {"messageType": "TEXT"},
    {"content": None},
    {"content": 5},
    {"content": ["hi"]},
    {"extend": "x"},
    {"extend": [1]},
    {"extend": {"n": float("inf")}},
    {"extend": {"n": 1 << 64}},
    {"extend": {"n": -(1 << 63) - 1}},
    {"extend": {"deep": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}},
]


@pytest.mark.parametrize("change", INVALID_SEND, ids=range(len(INVALID_SEND)))
def test_malformed_message_fields_are_invalid_with_cid_and_rid_echoed(change: dict[str, Any]) -> None:
    message = {**SEND, "rid": "r", **change}
    message = {k: v for k, v in message.items() if v is not None}
    error = decode_error(as_text("message", message))
    assert error.kind is ErrorKind.INVALID, error
    assert (error.cid, error.rid) == ("c-1", "r")
    wire = error.reply().wire()
    assert (wire["error"], wire["cid"], wire["rid"]) == ("invalid", "c-1", "r")


@pytest.mark.parametrize("extend", [{"b": b"bytes"}, {b"k": 1}, {"e": msgpack.ExtType(1, b"x")}])
def test_messagepack_values_json_cannot_carry_are_invalid_in_extend(extend: dict) -> None:
    error = decode_error(msgpack.packb({"code": "message", "message": {**SEND, "extend": extend}}))
    assert error.kind is ErrorKind.INVALID and error.cid == "c-1"


@pytest.mark.parametrize("cid", [None, "", "c" * 65, 5])
def test_a_missing_or_malformed_cid_is_invalid(cid: Any) -> None:
    message = {k: v for k, v in {**SEND, "cid": cid}.items() if v is not None}
    error = decode_error(as_text("message", message))
    assert error.kind is ErrorKind.INVALID and error.detail.startswith("message.cid")


def test_content_over_the_limit_is_too_large_with_cid() -> None:
    for content in ["a" * 101, "é" * 51, "\U0001f600" * 26, "a" * 1000]:
        error = decode_error(as_text("message", {**SEND, "content": content, "rid": "r"}), max_content=100)
        assert error.kind is ErrorKind.TOO_LARGE, (len(content), error)
        assert (error.cid, error.rid) == ("c-1", "r")


def test_content_up_to_the_limit_in_bytes_is_accepted() -> None:
    for content in ["a" * 100, "é" * 50, "\U0001f600" * 25, ""]:
        command = decode(as_text("message", {**SEND, "content": content}), max_content=100)
        assert command.content == content  # type: ignore[attr-defined]


def test_default_content_limit_is_16_kib() -> None:
    assert decode(as_text("message", {**SEND, "content": "a" * 16384})).content == "a" * 16384  # type: ignore[attr-defined]
    assert decode_error(as_text("message", {**SEND, "content": "a" * 16385})).kind is ErrorKind.TOO_LARGE


def test_errors_encode_with_rid_and_cid() -> None:
    error = decode_error(as_text("message", {**SEND, "chatId": "x", "rid": "r"}))
    frame = json.loads(encode(error.reply(), binary=False))
    assert frame["code"] == "error"
    assert frame["message"]["error"] == "invalid"
    assert frame["message"]["cid"] == "c-1" and frame["message"]["rid"] == "r"
    assert isinstance(frame["message"]["detail"], str) and frame["message"]["detail"]


def test_int_subclasses_from_a_store_encode_as_plain_ints() -> None:
    """MongoDB hands back bson Int64 (an int subclass): a reply built from it still encodes."""
    from bson.int64 import Int64

    from vim_cluster.protocol.codec import json_bytes

    assert json_bytes({"id": Int64(2**62), "at": [Int64(5)]}) == b'{"id":4611686018427387904,"at":[5]}'
    with pytest.raises(TypeError):
        json_bytes({"x": object()})
