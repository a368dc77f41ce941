"""The stored message is a value (model.Message, a msgspec Struct since session 14): frozen,
equal and hashed by its fields, built by position or keyword, and rebuilt from a SQLite row
the same however the row's enums are looked up."""

from __future__ import annotations

import msgspec
import pytest

from vim_cluster.adapters.sqlite_rows import _message
from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId

FIELDS = dict(id=MessageId(5), cid="c-1", from_id=UserId(7), chat_id=8, chat_type=ChatType.FRIEND,
              message_type=MessageType.TEXT, content="hi", extend=None, timestamp=1_700_000_000_000)


def test_a_message_is_a_frozen_value() -> None:
    by_keyword = Message(**FIELDS)  # type: ignore[arg-type]
    by_position = Message(*FIELDS.values())  # type: ignore[arg-type]
    assert by_keyword == by_position and hash(by_keyword) == hash(by_position)
    assert len({by_keyword, by_position}) == 1
    other = msgspec.structs.replace(by_keyword, content="bye")
    assert other != by_keyword and other.content == "bye" and by_keyword.content == "hi"
    with pytest.raises(AttributeError):
        by_keyword.content = "changed"  # type: ignore[misc]
    assert by_keyword.chat_key == "f7-8"


def test_a_row_becomes_the_message_it_stores() -> None:
    row = (5, "c-1", 7, 8, "friend", "text", "hi", '{"k":[1,"v"]}', 1_700_000_000_000)
    assert _message(row) == Message(**{**FIELDS, "extend": {"k": [1, "v"]}})  # type: ignore[arg-type]
    assert _message(row).chat_type is ChatType.FRIEND and _message(row).message_type is MessageType.TEXT
    with pytest.raises(ValueError):
        _message((5, "c-1", 7, 8, "channel", "text", "hi", None, 1))  # no such chat type: as ChatType() says
