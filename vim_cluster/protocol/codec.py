"""Client frame codec: bytes or text in -> a typed Command, a Reply -> text or bytes out.

Rules:
- Text frames are UTF-8 JSON, binary frames MessagePack, both `{"code": str, "message": {}}`.
- The bare text frame `ping` decodes to RawPing.
- Every malformed input raises FrameError with a documented kind: `bad-frame` (not JSON or
  MessagePack, not an object, no string code, a lone UTF-16 surrogate escape), `unknown-code`,
  `invalid` (a field missing or malformed), `too-large` (message content over the limit).
  Nothing else escapes `decode`.
- What `decode` returns can be stored and sent on in either encoding: every string is valid
  Unicode, and `extend` holds only JSON values (string keys, 64-bit integers, finite floats,
  nesting at most MAX_EXTEND_DEPTH deep).
- The frame-size cap is the transport's job (trio-websocket's max_message_size) and happens
  before this codec sees a byte.

Out (what senders use):
- `OutFrame(reply)`: a reply encoded at most once per mode, however many sessions get it.
  `frame.encoded(binary)` is str (a text frame) or bytes (a binary one), for a WebSocket
  library that picks the frame type from the type; `frame.payload(binary)` is always bytes
  (UTF-8 JSON, or MessagePack in binary mode) with `frame.text_frame(binary)` saying which
  frame type it goes in (the raw `pong` is text in both modes): for a sender that writes
  WebSocket frames itself or sends several in one batch.
- `OutFrame.from_json(data)`: a frame carried between nodes already encoded (`payload(False)`
  of the sending node's frame); text-mode sessions get `data` untouched, and it is parsed only
  for a binary-mode session, `wire_object()` or `reply`.
- `encode(reply, binary)` / `encode_bytes(reply, binary)`: the same for one reply, no caching.
- `json_bytes(obj)`: the JSON encoder used for client frames (msgspec; UTF-8 bytes).
JSON text is the same as stdlib `json.dumps(obj, ensure_ascii=False, separators=(",", ":"))`
wrote before, but for float exponents (`1e16`, not `1e+16`; only `extend` holds floats).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgpack
import msgspec

from ..core import names, usernames
from ..errors import ClientError, ErrorKind
from ..model import MAX_ID, ChatType, MessageType
from . import frames as f

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_RID = 64
MAX_CID = 64
MAX_LIST = 1000
MAX_NAME = 64
MAX_NAME_INPUT = 4 * MAX_NAME  # a display name as sent: names.MAX_LENGTH applies after NFC and trimming
MAX_EXTEND_DEPTH = 16
EXTEND_INT_RANGE = (-(1 << 63), (1 << 64) - 1)  # what both JSON peers and MessagePack carry
SENDABLE_TYPES = tuple(t for t in MessageType if t not in (MessageType.RECALLED, MessageType.DELETED))
# wire value -> member, for _Fields.enum
CHAT_TYPES: dict[str, ChatType] = {t.value: t for t in ChatType}
SENDABLE: dict[str, MessageType] = {t.value: t for t in SENDABLE_TYPES}
# A JSON escape of a UTF-16 surrogate; only a pre-filter: pairs are fine, lone ones are not.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

# msgspec's JSON: UTF-8 bytes out (the same text as stdlib json with ensure_ascii=False and no
# spaces, but for float exponents: 1e16, not 1e+16), exact integers of any size in and out;
# what it refuses to decode gets a second look from the stdlib (see _load_json_leniently).
def _int_subclass(value: Any) -> Any:
    """msgspec writes exact ints only: an int subclass (bson's Int64 from a MongoDB store) as int."""
    if isinstance(value, int):
        return int(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


json_bytes: Callable[[Any], bytes] = msgspec.json.Encoder(enc_hook=_int_subclass).encode
_json_decode: Callable[[str | bytes], Any] = msgspec.json.Decoder().decode

E = TypeVar("E")


class FrameError(ClientError):
    """A frame the node cannot act on; `rid`/`cid` are echoed when they could be read."""

    def __init__(self, kind: ErrorKind, detail: str, rid: str | None = None, cid: str | None = None):
        super().__init__(kind, detail)
        self.rid = rid
        self.cid = cid

    def reply(self) -> f.ErrorReply:
        return f.ErrorReply(self.kind, self.detail, rid=self.rid, cid=self.cid)


class _Fields:
    """Reads typed fields out of a frame's `message` object; raises FrameError(invalid)."""

    def __init__(self, code: str, body: Mapping[str, Any], rid: str | None) -> None:
        self.code = code
        self.body = body
        self.rid = rid
        self.cid: str | None = None

    def fail(self, key: str, problem: str, kind: ErrorKind = ErrorKind.INVALID) -> FrameError:
        return FrameError(kind, f"{self.code}.{key}: {problem}", rid=self.rid, cid=self.cid)

    def string(self, key: str, *, max_len: int, min_len: int = 0, required: bool = True) -> Any:
        value = self.body.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise self.fail(key, "must be a string")
        if not min_len <= len(value) <= max_len:
            raise self.fail(key, f"must be {min_len} to {max_len} characters")
        return value

    def id(self, key: str, *, required: bool = True) -> Any:
        value = self.body.get(key)
        if value is None and not required:
            return None
        return self._id_value(key, value)

    def _id_value(self, key: str, value: Any) -> int:
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
            number = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            raise self.fail(key, "must be an id (a decimal string)")
        if not 0 < number <= MAX_ID:
            raise self.fail(key, "is not a valid id")
        return number

    def ids(self, key: str) -> tuple[int, ...]:
        value = self.body.get(key)
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise self.fail(key, f"must be a list of at most {MAX_LIST} ids")
        return tuple(self._id_value(key, item) for item in value)

    def enum(self, key: str, choices: Mapping[str, E], *, required: bool = True, default: E | None = None) -> E:
        """One of `choices` (wire value -> member)."""
        value = self.body.get(key)
        if value is None and not required and default is not None:
            return default
        if isinstance(value, str):
            member = choices.get(value)
            if member is not None:
                return member
        raise self.fail(key, f"must be one of {', '.join(choices)}")

    def integer(self, key: str, *, low: int, high: int, default: int | None = None) -> int:
        value = self.body.get(key)
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"must be an integer from {low} to {high}")
        return value

    def mapping(self, key: str) -> dict[str, Any] | None:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, "must be an object")
        if not _plain_json(value, 0):
            problem = (f"must hold only JSON values (string keys, 64-bit integers, finite numbers, "
                       f"at most {MAX_EXTEND_DEPTH} levels deep)")
            raise self.fail(key, problem)
        return value


def _plain_json(value: Any, depth: int) -> bool:
    """True if `value` encodes the same in JSON and MessagePack (see the module rules)."""
    if value is None or isinstance(value, bool | str):
        return True
    if isinstance(value, int):
        return EXTEND_INT_RANGE[0] <= value <= EXTEND_INT_RANGE[1]
    if isinstance(value, float):
        return math.isfinite(value)
    if depth >= MAX_EXTEND_DEPTH:
        return False
    if isinstance(value, list):
        return all(_plain_json(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v, depth + 1) for k, v in value.items())
    return False


def _ping(r: _Fields) -> f.Command:
    return f.Ping(rid=r.rid)


def _register(r: _Fields) -> f.Command:
    username = usernames.valid_new(r.string("username", max_len=MAX_NAME))
    if username is None:
        raise r.fail("username", f"must be {usernames.PATTERN} (after Unicode NFKC normalisation)")
    password = r.string("password", max_len=MAX_PASSWORD)
    if len(password) < MIN_PASSWORD:
        raise r.fail("password", f"must be at least {MIN_PASSWORD} characters")
    name = r.string("name", max_len=MAX_NAME_INPUT, min_len=1, required=False)
    return f.Register(username, password, None if name is None else _name(r, name), rid=r.rid)


def _login(r: _Fields) -> f.Command:
    username = r.string("username", max_len=MAX_NAME)
    password = r.string("password", max_len=MAX_PASSWORD)
    return f.Login(username, password, rid=r.rid)


def _ready(r: _Fields) -> f.Command:
    token = r.string("token", max_len=4096, min_len=1, required=False)
    client = r.string("client", max_len=32, min_len=1, required=False) or "web"
    uuid = r.string("uuid", max_len=64, min_len=1, required=False)
    return f.Ready(token, client, uuid, rid=r.rid)


def _message(r: _Fields, max_content: int) -> f.Command:
    r.cid = r.string("cid", max_len=MAX_CID, min_len=1)
    chat_id = r.id("chatId")
    chat_type = r.enum("type", CHAT_TYPES)
    message_type = r.enum("messageType", SENDABLE)
    content = r.body.get("content")
    if not isinstance(content, str):
        raise r.fail("content", "must be a string")
    # A character is at least one byte: the length is a cheap first check of the size.
    if len(content) > max_content or len(content.encode("utf-8")) > max_content:
        raise r.fail("content", f"is larger than {max_content} bytes", ErrorKind.TOO_LARGE)
    extend = r.mapping("extend")
    # `extend` is stored and fanned out like the content: it gets the same byte limit, so a
    # message costs at most twice max_content however it is split.
    if extend and len(json_bytes(extend)) > max_content:
        raise r.fail("extend", f"is larger than {max_content} bytes", ErrorKind.TOO_LARGE)
    return f.SendMessage(r.cid, chat_id, chat_type, message_type, content, extend, rid=r.rid)


def _received(r: _Fields) -> f.Command:
    return f.Received(r.ids("ids"), rid=r.rid)


def _read(r: _Fields) -> f.Command:
    chat_id = r.id("chatId")
    chat_type = r.enum("type", CHAT_TYPES)
    timestamp = r.integer("timestamp", low=0, high=MAX_ID)
    return f.Read(chat_id, chat_type, timestamp, rid=r.rid)


def _recall(r: _Fields) -> f.Command:
    return f.Recall(r.id("id"), rid=r.rid)


def _history(r: _Fields) -> f.Command:
    chat_id = r.id("chatId")
    chat_type = r.enum("type", CHAT_TYPES)
    before = r.id("before", required=False)
    limit = r.integer("limit", low=1, high=100, default=50)
    return f.History(chat_id, chat_type, before, limit, rid=r.rid)


def _contacts(r: _Fields) -> f.Command:
    return f.Contacts(rid=r.rid)


def _name(r: _Fields, name: str) -> str:
    """A display or group name as stored (core/names.py), or `error invalid`."""
    normal = names.valid_new(name)
    if normal is None:
        raise r.fail("name", names.RULE)
    return normal


def _group_create(r: _Fields) -> f.Command:
    name = _name(r, r.string("name", max_len=MAX_NAME_INPUT, min_len=1))
    return f.GroupCreate(name, r.ids("members"), rid=r.rid)


def _group_add(r: _Fields) -> f.Command:
    return f.GroupAdd(r.id("groupId"), r.ids("members"), rid=r.rid)


def _group_remove(r: _Fields) -> f.Command:
    return f.GroupRemove(r.id("groupId"), r.ids("members"), rid=r.rid)


# The one table from wire code to parser. `message` takes the content limit too.
PARSERS: dict[str, Callable[[_Fields], f.Command]] = {
    "ping": _ping,
    "register": _register,
    "login": _login,
    "ready": _ready,
    "received": _received,
    "read": _read,
    "recall": _recall,
    "history": _history,
    "contacts": _contacts,
    "group-create": _group_create,
    "group-add": _group_add,
    "group-remove": _group_remove,
}
CODES = frozenset(PARSERS) | {"message"}


def _load(data: str | bytes) -> Any:
    if isinstance(data, str):
        try:
            return _json_decode(data)
        except msgspec.DecodeError:
            return _load_json_leniently(data)
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


def _load_json_leniently(data: str) -> Any:
    """What msgspec refused, parsed by the stdlib as before: a frame that is not JSON for
    msgspec but is for Python's json (NaN, Infinity) still gets its precise `invalid` answer
    with rid and cid; a lone surrogate escape is `bad-frame`. Only malformed frames come here."""
    obj = json.loads(data)
    if SURROGATE_ESCAPE.search(data) and _has_lone_surrogate(obj):
        raise _LoneSurrogate("a string holds a lone UTF-16 surrogate escape")
    return obj


class _LoneSurrogate(ValueError):
    pass


def _has_lone_surrogate(obj: Any) -> bool:
    """True if some string of a decoded JSON value is not valid Unicode (cannot be UTF-8)."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def decode(data: str | bytes, *, max_content: int = 16384) -> f.Command:
    """Decode one frame. Raises FrameError for every malformed input, nothing else."""
    if data == "ping":
        return f.RawPing()
    try:
        obj = _load(data)
    except _LoneSurrogate as exc:
        raise FrameError(ErrorKind.BAD_FRAME, f"not valid Unicode: {exc}") from None
    except (ValueError, RecursionError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        kind = "JSON" if isinstance(data, str) else "MessagePack"
        raise FrameError(ErrorKind.BAD_FRAME, f"not a {kind} object: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise FrameError(ErrorKind.BAD_FRAME, "the frame must be an object")
    code = obj.get("code")
    if not isinstance(code, str):
        raise FrameError(ErrorKind.BAD_FRAME, "the frame has no string 'code'")
    body = obj.get("message")
    if body is None:
        body = {}
    rid = body.get("rid") if isinstance(body, dict) else None
    if not (isinstance(rid, str) and len(rid) <= MAX_RID):
        rid = None
    if code not in CODES:
        raise FrameError(ErrorKind.UNKNOWN_CODE, f"unknown code {code[:64]!r}", rid=rid)
    if not isinstance(body, dict):
        raise FrameError(ErrorKind.INVALID, f"{code}.message must be an object", rid=rid)
    fields = _Fields(code, body, rid)
    if "rid" in body and rid is None:
        raise fields.fail("rid", f"must be a string of at most {MAX_RID} characters")
    if code == "message":
        return _message(fields, max_content)
    return PARSERS[code](fields)


def request_ids(data: str | bytes) -> tuple[str | None, str | None]:
    """The `rid` and (of a `message`) `cid` of a frame answered without being processed (a
    `rate-limited` one), when they can be read: the client learns which request to resend."""
    if data == "ping":
        return None, None
    try:
        obj = _load(data)
    except (ValueError, RecursionError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return None, None  # malformed: its error would be `bad-frame`, which echoes nothing
    body = obj.get("message") if isinstance(obj, dict) else None
    if not isinstance(body, dict):
        return None, None
    rid, cid = body.get("rid"), body.get("cid") if obj.get("code") == "message" else None
    return (rid if isinstance(rid, str) and len(rid) <= MAX_RID else None,
            cid if isinstance(cid, str) and 0 < len(cid) <= MAX_CID else None)


def encode_object(reply: f.Reply) -> dict[str, Any]:
    """The frame as a `{"code", "message"}` object (a new dict)."""
    return {"code": reply.code, "message": reply.wire()}


def encode_bytes(reply: f.Reply, binary: bool) -> bytes:
    """One reply as the payload bytes of its WebSocket frame: UTF-8 JSON for a text frame,
    MessagePack for a binary one. RawPong is `b"pong"` and goes in a text frame in both modes
    (`text_frame`)."""
    if isinstance(reply, f.RawPong):
        return b"pong"
    obj = {"code": reply.code, "message": reply.wire()}
    if binary:
        return msgpack.packb(obj, use_bin_type=True)
    return json_bytes(obj)


def text_frame(reply: f.Reply, binary: bool) -> bool:
    """Whether `encode_bytes(reply, binary)` goes in a text frame (else a binary one)."""
    return not binary or isinstance(reply, f.RawPong)


def encode(reply: f.Reply, binary: bool) -> str | bytes:
    """One reply as a WebSocket message: str for a text frame (JSON, or the raw `pong`), bytes
    for a binary one (MessagePack)."""
    if isinstance(reply, f.RawPong):
        return "pong"
    data = encode_bytes(reply, binary)
    return data if binary else data.decode()


class OutFrame:
    """A reply encoded at most once per mode, however many sessions it goes to.

    `encoded(binary)` is what a WebSocket library sends (str: a text frame); `payload(binary)`
    the same as bytes, with `text_frame(binary)` saying which kind of frame. `from_json` makes
    one from JSON bytes that another node encoded (written out untouched in text mode).
    """

    __slots__ = ("_reply", "_object", "_json", "_text", "_binary", "framed_text", "framed_binary")

    def __init__(self, reply: f.Reply) -> None:
        self._reply: f.Reply | None = reply
        self._object: dict[str, Any] | None = None
        self._json: bytes | None = None
        self._text: str | None = None
        self._binary: bytes | None = None
        # The whole WebSocket frame (header and payload), made once by the first connection
        # that writes it (node/ws_server.framed) and shared by every other one.
        self.framed_text: bytes | None = None
        self.framed_binary: bytes | None = None

    @classmethod
    def from_json(cls, data: bytes) -> OutFrame:
        """A frame from `payload(False)` of another node's frame (a `{"code", "message"}`
        object in UTF-8 JSON, trusted: it is parsed only if asked for its reply, its object or
        its MessagePack form)."""
        frame = cls.__new__(cls)
        frame._reply = frame._object = frame._text = frame._binary = None
        frame.framed_text = frame.framed_binary = None
        frame._json = bytes(data)
        return frame

    @property
    def reply(self) -> f.Reply:
        if self._reply is None:
            self._reply = f.RawReply(self.wire_object())
        return self._reply

    def wire_object(self) -> dict[str, Any]:
        """The frame as a {"code", "message"} object (what the forward channel carries)."""
        if self._object is None:
            if self._reply is None:
                assert self._json is not None
                self._object = _json_decode(self._json)
            else:
                self._object = encode_object(self._reply)
        return self._object

    def text_frame(self, binary: bool) -> bool:
        return not binary or isinstance(self._reply, f.RawPong)

    def payload(self, binary: bool) -> bytes:
        """The frame's bytes: UTF-8 JSON, or MessagePack if `binary` (b"pong" for RawPong)."""
        if binary:
            if self._binary is None:
                if isinstance(self._reply, f.RawPong):
                    self._binary = b"pong"
                else:
                    self._binary = msgpack.packb(self.wire_object(), use_bin_type=True)
            return self._binary
        if self._json is None:
            reply = self._reply
            if isinstance(reply, f.RawPong):
                self._json = b"pong"
            elif self._object is None and reply is not None:
                self._json = json_bytes({"code": reply.code, "message": reply.wire()})
            else:
                self._json = json_bytes(self.wire_object())
        return self._json

    def encoded(self, binary: bool) -> str | bytes:
        if binary and not isinstance(self._reply, f.RawPong):
            return self.payload(True)
        if self._text is None:
            self._text = self.payload(False).decode()
        return self._text
