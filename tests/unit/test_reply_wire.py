"""Reply frames serialise themselves from their declaration (protocol/wire.py): the text on the
wire is byte for byte what the hand-written `wire()` methods and stdlib json wrote before
(golden strings below), and the declaration rules each do what wire.py says."""

from __future__ import annotations

import json
from typing import Annotated, Any

import attrs
import msgpack
import msgspec
import pytest

from vim_cluster.core.presence import Change
from vim_cluster.errors import ErrorKind
from vim_cluster.model import ChatType, Department
from vim_cluster.protocol import frames as f
from vim_cluster.protocol import wire as w
from vim_cluster.protocol.codec import OutFrame, encode, encode_bytes, text_frame

from .test_codec import GROUP, MESSAGE, MESSAGE_WIRE

ODD = msgspec.structs.replace(MESSAGE, content='q"\\\n\t\x01\x7f\u2028é😀',
                              extend={"a": [1, 2.5, None, True, {"b": "c"}], "big": (1 << 64) - 1, "neg": -(1 << 63)})
ODD_TEXT = ('{"id":"1001","cid":"c-1","chatId":"22","type":"friend","messageType":"text",'
            '"content":"q\\"\\\\\\n\\t\\u0001\x7f\u2028é😀","extend":{"a":[1,2.5,null,true,{"b":"c"}],'
            '"big":18446744073709551615,"neg":-9223372036854775808},"fromId":"11","timestamp":1700000000123')
MESSAGE_TEXT = ('{"id":"1001","cid":"c-1","chatId":"22","type":"friend","messageType":"text","content":"héllo",'
                '"extend":{"k":[1,"v"]},"fromId":"11","timestamp":1700000000123')
CONTACTS = f.ContactsOut((f.ContactUser(22, "Bob", False, 5, unread=3),), (GROUP,), group_unread={GROUP.id: 2},
                         departments=(Department(4, "R&D"), Department(5, "Backend", 4)), members={5: (22,)})

# (reply, its text frame as the hand-written wire() + json.dumps wrote it before the declarations)
GOLDEN: list[tuple[f.Reply, str]] = [
    (f.Ack("c-1", 1001, 7, rid="r"), '{"code":"ack","message":{"cid":"c-1","id":"1001","timestamp":7,"rid":"r"}}'),
    (f.Ack("c", 1, 2), '{"code":"ack","message":{"cid":"c","id":"1","timestamp":2}}'),
    (f.MessageOut(MESSAGE), '{"code":"message","message":' + MESSAGE_TEXT + "}}"),
    (f.MessageOut(ODD), '{"code":"message","message":' + ODD_TEXT + "}}"),
    (f.MessageOut(ODD, offline=True), '{"code":"message","message":' + ODD_TEXT + ',"offline":true}}'),
    (f.Receipt(1001, 22, by=22), '{"code":"receipt","message":{"id":"1001","chatId":"22","status":"delivered","by":"22"}}'),
    (f.Pong(123, rid="r"), '{"code":"pong","message":{"ts":123,"rid":"r"}}'),
    (f.ErrorReply(ErrorKind.INVALID, "bad", rid="r", cid="c"),
     '{"code":"error","message":{"error":"invalid","detail":"bad","cid":"c","rid":"r"}}'),
    (f.ErrorReply(ErrorKind.RATE_LIMITED, "slow down"),
     '{"code":"error","message":{"error":"rate-limited","detail":"slow down"}}'),
    (f.ErrorReply(ErrorKind.INVALID, "x", cid="c"), '{"code":"error","message":{"error":"invalid","detail":"x","cid":"c"}}'),
    (f.RegisterOk(11, rid="r"), '{"code":"register-ok","message":{"userId":"11","rid":"r"}}'),
    (f.LoginOk(11, "tok", 99, rid="r"),
     '{"code":"login-ok","message":{"userId":"11","token":"tok","expiresAt":99,"rid":"r"}}'),
    (f.ReadyOk(11, "node-1", 5), '{"code":"ready-ok","message":{"userId":"11","nodeId":"node-1","serverTime":5}}'),
    (f.ReadyOk(11, "node-1", 5, 120_000),
     '{"code":"ready-ok","message":{"userId":"11","nodeId":"node-1","serverTime":5,"recallWindowMs":120000}}'),
    (f.SyncDone(3), '{"code":"sync-done","message":{"count":3}}'),
    (f.ReadOut(22, ChatType.FRIEND, 8, by=22),
     '{"code":"read","message":{"chatId":"22","type":"friend","timestamp":8,"by":"22"}}'),
    (f.RecallOut(1001, 22, ChatType.FRIEND, by=11),
     '{"code":"recall","message":{"id":"1001","chatId":"22","type":"friend","by":"11"}}'),
    (f.HistoryOut(22, ChatType.FRIEND, (MESSAGE,), True, rid="r"),
     '{"code":"history","message":{"chatId":"22","type":"friend","messages":[' + MESSAGE_TEXT + '}],"more":true,"rid":"r"}}'),
    (f.HistoryOut(22, ChatType.FRIEND, (MESSAGE,), False, statuses={MESSAGE.id: "read"}),
     '{"code":"history","message":{"chatId":"22","type":"friend","messages":[' + MESSAGE_TEXT
     + ',"status":"read"}],"more":false}}'),
    (f.HistoryOut(22, ChatType.GROUP, (MESSAGE,), False, read_counts={MESSAGE.id: 2}),
     '{"code":"history","message":{"chatId":"22","type":"group","messages":[' + MESSAGE_TEXT
     + ',"readCount":2}],"more":false}}'),
    (CONTACTS,
     '{"code":"contacts","message":{"users":[{"userId":"22","name":"Bob","online":false,"deptId":"5","unread":3}],'
     '"groups":[{"groupId":"500","name":"team","members":["11","22"],"owner":"11","unread":2}],'
     '"departments":[{"deptId":"4","name":"R&D","parentId":null,"members":[]},'
     '{"deptId":"5","name":"Backend","parentId":"4","members":["22"]}]}}'),
    (f.PresenceOut((Change(22, True, "dept-1"),)),
     '{"code":"presence","message":{"userId":"22","online":true,"nodeId":"dept-1"}}'),
    (f.PresenceOut((Change(22, True, "dept-1"), Change(23, False, None))),
     '{"code":"presence","message":{"users":[{"userId":"22","online":true,"nodeId":"dept-1"},'
     '{"userId":"23","online":false}]}}'),
    (f.GroupOk(GROUP, rid="r"),
     '{"code":"group-ok","message":{"groupId":"500","name":"team","members":["11","22"],"owner":"11","rid":"r"}}'),
    (f.OtherLogin("u-2", "node-1"), '{"code":"other-login","message":{"uuid":"u-2","nodeId":"node-1"}}'),
    (f.OtherLogin(None, "node-1"), '{"code":"other-login","message":{"uuid":null,"nodeId":"node-1"}}'),
    (f.RawReply({"code": "receipt", "message": {"id": "1", "chatId": "2", "status": "delivered", "by": "2"}}),
     '{"code":"receipt","message":{"id":"1","chatId":"2","status":"delivered","by":"2"}}'),
]


@pytest.mark.parametrize(("reply", "text"), GOLDEN, ids=[f"{g[0].code}-{i}" for i, g in enumerate(GOLDEN)])
def test_every_reply_writes_exactly_the_text_it_wrote_before(reply: f.Reply, text: str) -> None:
    assert encode(reply, binary=False) == text
    assert encode_bytes(reply, binary=False) == text.encode()
    # MessagePack holds the same object, keys in the same order
    assert list(msgpack.unpackb(encode(reply, binary=True)).items()) == list(json.loads(text).items())
    frame = OutFrame(reply)
    assert frame.payload(False) == text.encode() and frame.encoded(False) == text


def test_every_reply_class_is_declared() -> None:
    declared = [c for c in vars(f).values() if isinstance(c, type) and issubclass(c, f.Reply)
                and c not in (f.Reply, f.RawReply)]
    assert len(declared) >= 17
    for cls in declared:
        assert cls.CODE and "def wire(self)" in cls.WIRE_SOURCE, cls  # type: ignore[attr-defined]


def test_the_raw_pong_is_the_text_pong_in_both_modes() -> None:
    assert (encode(f.RawPong(), False), encode(f.RawPong(), True)) == ("pong", "pong")
    frame = OutFrame(f.RawPong())
    assert frame.payload(True) == frame.payload(False) == encode_bytes(f.RawPong(), True) == b"pong"
    assert frame.text_frame(True) and text_frame(f.RawPong(), True)
    assert not OutFrame(f.SyncDone(1)).text_frame(True) and not text_frame(f.SyncDone(1), True)


def test_a_frame_from_another_node_s_json_goes_out_untouched_and_parses_on_demand() -> None:
    data = encode_bytes(f.MessageOut(MESSAGE), False)
    frame = OutFrame.from_json(data)
    assert frame.payload(False) is frame.payload(False) and frame.payload(False) == data
    assert frame.encoded(False) == data.decode()
    assert frame.wire_object() == {"code": "message", "message": MESSAGE_WIRE}
    assert frame.reply.code == "message" and frame.reply.message_id() == MESSAGE.id
    assert frame.payload(True) == encode_bytes(f.MessageOut(MESSAGE), True)


class ToyReply:
    """A base for this file's declared frames: not a `frames.Reply`, so that the docs test,
    which walks Reply's subclasses for wire codes, does not see them."""

    CODE = ""

    @property
    def code(self) -> str:
        return self.CODE

    def wire(self) -> dict[str, Any]:  # what @w.reply generates, as on frames.Reply
        raise NotImplementedError


CALLS: list[int] = []


def _counted(n: int) -> int:
    CALLS.append(n)
    return n


@w.reply("counted")
@attrs.frozen
class Counted(ToyReply):
    n: Annotated[int, _counted]


def test_an_out_frame_writes_its_object_once_for_the_forward_channel_and_both_modes() -> None:
    CALLS.clear()
    frame = OutFrame(Counted(5))  # type: ignore[arg-type]
    assert frame.wire_object() == {"code": "counted", "message": {"n": 5}}
    assert frame.payload(False) == b'{"code":"counted","message":{"n":5}}'
    assert msgpack.unpackb(frame.payload(True)) == frame.wire_object()
    assert CALLS == [5]


# ---------------------------------------------------------------- the declaration rules


def _spread(value: int) -> dict[str, Any]:
    return {"spread": value}


@w.reply("toy")
@attrs.frozen
class Toy(ToyReply):
    first_id: Annotated[int, w.ID]
    kind: Annotated[ChatType, w.ENUM, w.Name("type")]
    members: Annotated[tuple[int, ...], w.IDS]
    parent: Annotated[int | None, w.OPT_ID]
    plain_value: Any
    rid: str | None = None
    fixed: Annotated[str, w.Const] = attrs.field(init=False, default="always")
    maybe: Annotated[str | None, w.OMIT_NONE] = None
    flag: Annotated[bool, w.OMIT_FALSY] = False
    summed: Annotated[int, w.FromFrame(lambda t: t.first_id + t.hidden)] = 0
    more: Annotated[int, w.Spread(_spread)] = 0
    hidden: Annotated[int, w.Local] = 1


def test_each_declaration_rule_writes_what_wire_py_says() -> None:
    toy = Toy(7, ChatType.GROUP, (1, 2), None, {"x": [1]}, rid="r", hidden=3)
    assert toy.wire() == {"firstId": "7", "type": "group", "members": ["1", "2"], "parent": None,
                          "plainValue": {"x": [1]}, "fixed": "always", "summed": 10, "spread": 0, "rid": "r"}
    assert list(toy.wire())[-1] == "rid"  # rid last, wherever it is declared
    full = Toy(7, ChatType.FRIEND, (), 4, None, maybe="m", flag=True)
    assert full.wire() == {"firstId": "7", "type": "friend", "members": [], "parent": "4", "plainValue": None,
                           "fixed": "always", "maybe": "m", "flag": True, "summed": 8, "spread": 0}


def test_a_declaration_that_says_nothing_about_the_wire_is_refused() -> None:
    with pytest.raises(TypeError, match="says nothing about the wire"):
        @w.reply("bad")
        @attrs.frozen
        class Bad(ToyReply):
            value: Annotated[int, "id"]

    with pytest.raises(TypeError, match="needs init=False"):
        @w.reply("bad")
        @attrs.frozen
        class BadConst(ToyReply):
            value: Annotated[str, w.Const] = "x"


def test_camel_case_wire_names() -> None:
    assert [w.camel(n) for n in ("id", "user_id", "server_time", "a_b_c")] == ["id", "userId", "serverTime", "aBC"]
