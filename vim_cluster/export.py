"""`vim-cluster export` and `import`: messages as JSON Lines, the same bytes on every backend.

Format (version 1): a header line `{"format":"vim-cluster-messages","version":1}`, then one
message per line, oldest first, keys sorted, no spaces, UTF-8:
  {"chatId":"…","chatType":"friend|group","cid":"…","content":"…","extend":{…}|null,
   "fromId":"…","id":"…","messageType":"…","state":"live|recalled|deleted","timestamp":ms}
Ids are decimal strings (as on the wire: snowflakes exceed 2**53). `state` says whether the
message was recalled by its sender or erased with its sender's account.

Import is idempotent: messages are saved by (fromId, cid) like a client's retry, so a message
that exists is left as it is and nothing is created twice. Offline sets and read cursors are
not part of an export (an imported message waits for nobody).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from .ids import first_id_at
from .lifecycle_ports import MessageExport
from .model import ChatType, Message, MessageId, MessageType, UserId
from .ports import MessageStore, NewMessage
from .protocol.codec import MAX_ID

FORMAT = "vim-cluster-messages"
VERSION = 1
PAGE = 1000
CHAT_KEY_RE = re.compile(r"^(g\d+|f\d+-\d+)$")


def _line(fields: dict[str, Any]) -> str:
    return json.dumps(fields, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"


def header() -> str:
    return _line({"format": FORMAT, "version": VERSION})


def message_line(m: Message) -> str:
    state = {MessageType.RECALLED: "recalled", MessageType.DELETED: "deleted"}.get(m.message_type, "live")
    return _line({
        "chatId": str(m.chat_id), "chatType": m.chat_type.value, "cid": m.cid, "content": m.content,
        "extend": m.extend, "fromId": str(m.from_id), "id": str(m.id), "messageType": m.message_type.value,
        "state": state, "timestamp": m.timestamp,
    })


def parse_since(text: str) -> int:
    """A date (YYYY-MM-DD) or ISO date-time (UTC unless it says otherwise) as ms; ValueError."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since must be a date like 2026-01-31 or 2026-01-31T08:00, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def chat_key_of(text: str) -> str:
    """A conversation key from `g<groupId>`, `f<userId>-<userId>` or a bare group id."""
    if text.isdigit():
        return f"g{text}"
    if not CHAT_KEY_RE.match(text):
        raise ValueError(f"--chat must be g<groupId>, f<userId>-<userId> or a group id, got {text!r}")
    if text.startswith("f"):
        low, high = sorted(int(p) for p in text[1:].split("-"))
        return f"f{low}-{high}"
    return text


@attrs.frozen
class Selection:
    """What to export: one user's messages (user_id) or one conversation (chat_key)."""

    user_id: UserId | None = None
    chat_key: str | None = None
    since_ms: int | None = None


def exported(store: MessageExport, selection: Selection, page: int = PAGE) -> Iterator[Message]:
    """The selected messages, oldest first, fetched a page at a time (memory stays bounded)."""
    after = MessageId(first_id_at(selection.since_ms) - 1) if selection.since_ms is not None else MessageId(0)
    while True:
        if selection.user_id is not None:
            batch = store.messages_of_user(selection.user_id, after, page)
        else:
            assert selection.chat_key is not None
            batch = store.messages_of_chat(selection.chat_key, after, page)
        if not batch:
            return
        yield from batch
        after = batch[-1].id


class BadExportLine(ValueError):
    """A line of an import file is not a message of this format (says which line)."""


def _id(fields: dict[str, Any], key: str) -> int:
    value = int(fields[key])
    if not 0 < value <= MAX_ID:
        raise ValueError(f"{key} {fields[key]!r} is not a positive 64-bit id")
    return value


def _time(fields: dict[str, Any]) -> int:
    value = int(fields["timestamp"])
    if not 0 <= value <= MAX_ID:
        raise ValueError(f"timestamp {fields['timestamp']!r} is not a time in ms")
    return value


def parse_line(number: int, text: str) -> Message:
    problem = f"line {number}: not a message of {FORMAT} v{VERSION}"
    try:
        d = json.loads(text)
        if not isinstance(d, dict):
            raise TypeError(f"a JSON {type(d).__name__}, not an object")
        return Message(
            id=MessageId(_id(d, "id")), cid=str(d["cid"]), from_id=UserId(_id(d, "fromId")),
            chat_id=_id(d, "chatId"), chat_type=ChatType(d["chatType"]),
            message_type=MessageType(d["messageType"]), content=str(d["content"]),
            extend=d["extend"], timestamp=_time(d),
        )
    except KeyError as exc:
        raise BadExportLine(f"{problem}: no {exc.args[0]!r}") from None
    except (ValueError, TypeError) as exc:
        raise BadExportLine(f"{problem}: {exc}") from None


def check_header(text: str) -> None:
    try:
        d = json.loads(text)
    except ValueError:
        d = None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise BadExportLine(f"line 1: not a {FORMAT} file (no header line)")
    if d.get("version") != VERSION:
        raise BadExportLine(f"line 1: version {d.get('version')!r} is not supported (this build reads {VERSION})")


@attrs.define
class ImportCount:
    created: int = 0
    existing: int = 0


def import_lines(store: MessageStore, lines: Iterable[str], count: ImportCount, batch: int = 100) -> ImportCount:
    """Saves the messages of an export, `batch` per call; idempotent per (fromId, cid)."""
    pending: list[NewMessage] = []

    def flush() -> None:
        for saved in store.save_messages(pending):
            if saved.created:
                count.created += 1
            else:
                count.existing += 1
        pending.clear()

    number = 0
    for number, text in enumerate(lines, start=1):
        if number == 1:
            check_header(text)
            continue
        if not text.strip():
            continue
        pending.append(NewMessage(parse_line(number, text), ()))
        if len(pending) >= batch:
            flush()
    if number == 0:
        raise BadExportLine(f"line 1: not a {FORMAT} file (it is empty)")
    if pending:
        flush()
    return count
