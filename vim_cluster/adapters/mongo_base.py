"""What the MongoDB message store is made of: the client, collection layout, documents, errors.

Rules:
- Client defaults, each overridable in the URL: serverSelectionTimeoutMS=3000 and
  connectTimeoutMS=3000 (an outage answers within about 3 s), socketTimeoutMS=10000, and
  write concern w=1 with journal=true (an acknowledged write is in the journal) unless the
  URL sets `w` or `journal` (`vim.store.sync: normal`: w=1 alone, acknowledged once applied
  in memory; mongod syncs its journal every 100 ms, so a mongod crash or power loss may lose
  up to that much).
- Outage errors (ConnectionFailure and its kin AutoReconnect, NetworkTimeout,
  ServerSelectionTimeoutError, NotPrimaryError; a write concern error; a server shutting down
  or stepping down) become StoreUnavailable in `translated`, once. pymongo reconnects by
  itself: the same client works again when the server is back.
- Chat messages live in `chat_message_{n}`, n = mix64(conversation key) % split, where the
  conversation key is the group id, or for friends low * 2**32 + high of the two user ids
  (deterministic and independent of who sent). The key is mixed (splitmix64's finaliser)
  before `% split` because a snowflake's low 12 bits are a per-millisecond sequence that is
  almost always 0: a raw `id % 16` would put nearly every conversation in chat_message_0.
- Message documents use V-IM's field names: _id (the message id), cid, from_id, chat_id,
  chat_type, message_type, content, extend, timestamp, chat_key. `extend` is stored as JSON
  text, as the SQLite store does: a client's keys may hold '.' or '$' and its numbers may
  not fit BSON's int64, and neither may fail a batch.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
from pymongo import MongoClient, uri_parser
from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    OperationFailure,
    WriteConcernError,
)

from ..errors import StoreUnavailable
from ..model import ChatType, Message, MessageId, MessageType, UserId

DEFAULT_SPLIT = 16
CHAT_PREFIX = "chat_message_"
CLAIMS = "message_ids"  # one per (from_id, cid): dedup across shards, id -> shard, the copy
INTENTS = "message_intents"  # copies of saves an older node left unfinished (no longer written)
PENDING = "pending_messages"  # offline sets: (user_id, message_id, shard) and the copy
# An offline row's copy of its message, as one JSON string: FerretDB 1.x decodes every row a
# confirm's find and delete look at, and one string field decodes faster than the ten fields
# of a document (a `message` document: rows of nodes before session 18).
ROW_COPY = "message_json"
CURSORS = "read_cursors"
LAYOUT = "store_layout"
LOG_PREFIX = "message-log-"
DUPLICATE_KEY = 11000
CLIENT_DEFAULTS = {"serverSelectionTimeoutMS": 3000, "connectTimeoutMS": 3000, "socketTimeoutMS": 10000}
# Server error codes that mean "cannot serve now": shutting down, stepping down, not primary,
# network trouble between a mongos and a shard, a write concern that could not be met.
OUTAGE_CODES = frozenset({6, 7, 64, 89, 91, 189, 9001, 10107, 11600, 11602, 13435, 13436})
_MASK64 = (1 << 64) - 1


def open_client(url: str, journaled: bool = True) -> MongoClient[dict[str, Any]]:
    """A MongoClient with this store's defaults for what the URL does not set (`journaled`
    False, from `vim.store.sync: normal`: w=1 without journal=true)."""
    given = uri_parser.parse_uri(url)["options"]
    options: dict[str, Any] = {k: v for k, v in CLIENT_DEFAULTS.items() if k not in given}
    if "w" not in given and "journal" not in given:
        options["w"] = 1
        if journaled:
            options["journal"] = True
    client: MongoClient[dict[str, Any]] = MongoClient(url, **options)
    return client


@contextlib.contextmanager
def translated(name: str) -> Iterator[None]:
    """The one place where MongoDB outage errors become StoreUnavailable."""
    try:
        yield
    except (ConnectionFailure, WriteConcernError) as exc:
        raise StoreUnavailable(f"mongodb {name}: {exc}") from exc
    except BulkWriteError as exc:
        if exc.details.get("writeConcernErrors"):
            raise StoreUnavailable(f"mongodb {name}: write concern not met: {exc}") from exc
        raise
    except OperationFailure as exc:
        if exc.code in OUTAGE_CODES or exc.has_error_label("RetryableWriteError"):
            raise StoreUnavailable(f"mongodb {name}: {exc}") from exc
        raise


def insert_new(collection: Collection[dict[str, Any]], docs: Sequence[dict[str, Any]]) -> set[int]:
    """Inserts every document whose unique keys are free (one round trip, unordered).

    Returns the indexes of the documents refused as duplicates; any other error is raised.
    """
    if not docs:
        return set()
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if exc.details.get("writeConcernErrors") or any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        return {int(e["index"]) for e in errors}
    return set()


def _mix64(value: int) -> int:
    """splitmix64's finaliser: every input bit affects every output bit."""
    z = value & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def conversation_key(chat_key: str) -> int:
    """The numeric key of a conversation: the group id, or both friend ids combined."""
    if chat_key.startswith("g"):
        return int(chat_key[1:])
    low, high = (int(part) for part in chat_key[1:].split("-"))
    return ((low << 32) + high) & _MASK64


def shard_of(chat_key: str, split: int) -> int:
    """Which `chat_message_{n}` collection holds the conversation's messages."""
    return _mix64(conversation_key(chat_key)) % split


def message_doc(m: Message) -> dict[str, Any]:
    return {
        "_id": m.id,
        "cid": m.cid,
        "from_id": m.from_id,
        "chat_id": m.chat_id,
        "chat_type": m.chat_type.value,
        "message_type": m.message_type.value,
        "content": m.content,
        "extend": json.dumps(m.extend, ensure_ascii=False) if m.extend is not None else None,
        "timestamp": m.timestamp,
        "chat_key": m.chat_key,
    }


def _int64(value: Any) -> Any:
    """msgspec's hook for a copy read back from the store: BSON's Int64 is an int."""
    if isinstance(value, int):
        return int(value)
    raise TypeError(f"cannot pack a {type(value).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_int64)


def pack(doc: dict[str, Any]) -> str:
    """A message document as one JSON string: an offline row's copy (`ROW_COPY`)."""
    return _ENCODER.encode(doc).decode()


def unpack(text: str) -> dict[str, Any]:
    """The message document `pack` gave."""
    doc: dict[str, Any] = msgspec.json.decode(text)
    return doc


def drop_row_copies(pending: Collection[dict[str, Any]], query: dict[str, Any], fields: dict[str, Any]) -> None:
    """Recall and erasure of the offline rows matching `query`: a row's `message_json` is
    dropped (the row then reads its message through its shard, which the caller changes
    next); an older node's `message` document gets `fields`."""
    pending.update_many({**query, ROW_COPY: {"$exists": True}}, {"$unset": {ROW_COPY: ""}})
    pending.update_many({**query, "message": {"$exists": True}}, copy_update(fields))


def copy_update(fields: dict[str, Any]) -> dict[str, Any]:
    """The update that sets `fields` in a document's copy of its message (the `message` field
    of an offline row, a claim or an older node's intent)."""
    return {"$set": {f"message.{k}": v for k, v in fields.items()}}


def message_of(doc: dict[str, Any]) -> Message:
    """A message document (a shard's, or a copy). A recalled message has no extend, also when a
    node of an earlier release recalled it (it emptied the content only: docs/operations.md,
    Upgrading)."""
    extend, message_type = doc.get("extend"), MessageType(doc["message_type"])
    return Message(
        id=MessageId(doc["_id"]),
        cid=doc["cid"],
        from_id=UserId(doc["from_id"]),
        chat_id=doc["chat_id"],
        chat_type=ChatType(doc["chat_type"]),
        message_type=message_type,
        content=doc["content"],
        extend=json.loads(extend) if extend is not None and message_type is not MessageType.RECALLED else None,
        timestamp=doc["timestamp"],
    )
