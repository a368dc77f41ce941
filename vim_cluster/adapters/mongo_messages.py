"""The MessageStore port on MongoDB (pymongo), V-IM's layout; works on FerretDB.

Collections (see `mongo_base` for the shard rule and the document fields):
- `chat_message_{n}`: messages, sharded by conversation; index (chat_key, _id).
- `message_ids`: one claim per (from_id, cid), unique index (from_id, cid); `_id` is the
  message id, `shard` says where the message lives (how `get` and `recall` find it), and
  `message` and `pending_for` are a copy of the message and its recipients: what a retry
  finishes an unfinished save with.
- `message_intents`: copies of messages whose save an older node (one that wrote intents,
  before session 18) left unfinished (below); nothing writes it any more.
- `pending_messages`: offline sets, unique index (user_id, message_id); each row carries a copy
  of its message as one JSON string (`message_json`; older nodes' rows: a `message`
  document), so confirms and offline replay read no shard (below).
- `read_cursors`: one document per (user, chat), index user_id.
- `store_layout`: the `split` the database was created with (a different one is refused).
- `message-log-{yyyyMMdd}`: V-IM's raw frame log, written by `log_frames` (not part of the port).
Offline sets and cursors live here, not in Redis, so a Redis flush loses nothing.

How save_messages stays idempotent without transactions (FerretDB has none), per message:
1. claim: insert {_id: id, from_id, cid, shard, message, pending_for} into message_ids. The
   unique (from_id, cid) index lets exactly one claim per sender and cid exist, across
   shards, and the claim keeps the copy a retry finishes the message with.
2. pending: insert its offline-set rows, each with a copy of the document (a duplicate row is
   ignored). From here on offline replay may give it: replay and confirms take the row's
   copy and never look the message up in its shard.
3. message: insert its document into its shard (a duplicate _id is ignored), last: a message
   whose document exists is complete. From here on history, get, recall and group replay see
   it.
Each step is one unordered bulk insert for the whole batch (an update or a delete costs
FerretDB 1.x a decode of every document it looks at): a batch of new messages costs 2 round
trips plus one per shard it touches (repeats add a lookup of their claims and one query per
shard those live in; on FerretDB with PostgreSQL one lookup of each claim and one of its
document, both by its cid: see `_claimed`). Until session 18 a save also inserted an intent
(the copy) first and deleted it last: two more documents per message, about a fifth of the
profile's throughput on FerretDB. The claim's copy replaces it, and costs the copy's bytes
for as long as the message is kept.

When a claim already exists (a repeat, or a retry after a failure):
- its document exists: done; the repeat gets the stored message with created=False.
- its document is missing: an earlier call failed (or is still running elsewhere). This call
  writes the rows and the document from the claim's copy (same id, timestamp, content and
  recipients: never a second message) and reports created=True, because no call has returned
  it as saved. A recipient who got it by replay and confirmed it before this retry gets it
  once more, and drops it by id.
Older claims: a claim with `done` and no copy is done (the first nodes wrote claims with the
copy and this order, then marked them done). A claim with neither (nodes that wrote intents
and the document before the rows) is unfinished while its intent exists: it is finished from
the intent (its rows written again if its document exists) and the intent deleted; without
an intent it is done. A node that writes intents takes a claim with a copy for one of the
first nodes', which it finishes correctly (and marks done), so the two may run side by side
during an upgrade; its recall leaves the claim's copy as it was. It writes a document before
its rows: if it stops between the two while finishing a newer node's save, the rows stay
missing (a stop in the middle of a retry, during an upgrade).

So after an error part of a batch may be half-visible: in its recipients' offline sets (and
delivered by replay) but not yet in history, get or recall. The next save of the same
(from_id, cid) finishes every message under its first id, and so does `finish_saves`, which
the node that ran the failed batch calls once the store answers again, then delivering what
it finished (node/store_writer.py): it finishes what has a claim and writes nothing for a
message that left no trace. Only a node that stops before that leaves it to the client's
retry; a client that never retries then leaves it so until the retention purge. Two nodes saving the same (from_id, cid) at the same
moment may both report created=True; recipients drop the duplicate by id. A message finished
by a retry keeps its first attempt's id, so it sorts before messages the sender sent between
the failure and the retry.

Confirms (`commit`): every confirm of a group commit costs one find of the offline rows (with
their copies) and one delete, whatever the number of users and ids. Offline replay
(`pending`) is one find per page. Neither reads a shard: on FerretDB 1.x with PostgreSQL,
which pushes no `$in` (and no equality on an int64 id above 2**53) down to SQL, a lookup of
messages by id decodes the whole shard, so a confirm cost grew with the history. FerretDB
decodes every row such a find or delete looks at, and a copy in one string field decodes
faster than a document of ten (session 18: the stores' CPU per message -18 %). Rows without a
copy (written before copies existed) are looked up in their shards, as before.
Recall and erasure change the claims' copies and the older rows' `message` documents, and
drop the rows' `message_json` (a row then reads its message through its shard), before the
documents.

Deviation from the port's "none of it on error": without transactions a failed batch may
leave some of its messages in offline sets or visible (see above); nothing is reported saved.

Acks: every write uses the client's write concern (w=1, journal=true by default), so
save_messages returns only once the server acknowledged the journaled write. FerretDB accepts
and ignores writeConcern; its SQLite backend commits each write to its WAL before answering.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import structlog
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, OperationFailure

from ..config_values import redact
from ..errors import NotFound
from ..model import ChatType, GroupId, Message, MessageId, MessageType, ReadCursor, UserId, chat_key
from ..ports import Confirm, NewMessage, Saved
from .mongo_base import (
    CHAT_PREFIX,
    CLAIMS,
    CURSORS,
    DEFAULT_SPLIT,
    INTENTS,
    LAYOUT,
    LOG_PREFIX,
    PENDING,
    ROW_COPY,
    copy_update,
    drop_row_copies,
    insert_new,
    message_doc,
    message_of,
    open_client,
    pack,
    shard_of,
    translated,
    unpack,
)
from .mongo_lifecycle import MongoLifecycle

log = structlog.get_logger()
Doc = dict[str, Any]
UNREAD_CHUNK = 200


@attrs.frozen
class FrameLogEntry:
    """One raw client frame for V-IM's daily message log."""

    content: str
    sender_id: int
    send_time: int  # ms


class MongoMessages(MongoLifecycle):
    """The MessageStore port on MongoDB; pymongo's client is safe to share between threads."""

    commits_inline = False  # every write is a network round trip: commits run in a worker thread
    commits_atomic = False  # no transactions: a failed commit may leave saves half done (finish_saves)
    checkpoints = False  # the server keeps its own journal: nothing for `checkpoint` to do

    def __init__(self, url: str, split: int = DEFAULT_SPLIT, journaled: bool = True) -> None:
        if split < 1:
            raise ValueError(f"split must be at least 1, got {split}")
        self.name = redact(url)
        self.split = split
        self._client = open_client(url, journaled)
        try:
            with translated(self.name):
                self._db = self._client.get_default_database()
                self._shards: list[Collection[Doc]] = [self._db[f"{CHAT_PREFIX}{n}"] for n in range(split)]
                self._claims: Collection[Doc] = self._db[CLAIMS]
                self._intents: Collection[Doc] = self._db[INTENTS]
                self._pending: Collection[Doc] = self._db[PENDING]
                self._cursors: Collection[Doc] = self._db[CURSORS]
                self._check_layout()
                self._create_indexes()
                self._by_pair = self._equality_pushed_down()
        except BaseException:  # noqa: BLE001 - close what was opened, then re-raise
            self._client.close()
            raise

    def _check_layout(self) -> None:
        """Refuses to open a database created with another split (its shards would be lost)."""
        layout = self._db[LAYOUT]
        insert_new(layout, [{"_id": "chat_message", "split": self.split}])
        stored = layout.find_one({"_id": "chat_message"})
        if stored is not None and stored["split"] != self.split:
            raise ValueError(f"{self.name} was created with split={stored['split']}, not {self.split}")

    def _create_indexes(self) -> None:
        """One index per query; creating an existing index is a no-op (safe at every start)."""
        for shard in self._shards:
            shard.create_index([("chat_key", ASCENDING), ("_id", ASCENDING)], name="chat_key_id")
        self._claims.create_index([("from_id", ASCENDING), ("cid", ASCENDING)], name="from_id_cid", unique=True)
        self._pending.create_index(
            [("user_id", ASCENDING), ("message_id", ASCENDING)], name="user_message", unique=True
        )
        self._cursors.create_index([("user_id", ASCENDING)], name="user_id")
        # Read state (history items' delivered/read, unread counts).
        for shard in self._shards:
            shard.create_index([("chat_key", ASCENDING), ("timestamp", ASCENDING)], name="chat_key_timestamp")
        self._cursors.create_index([("chat_type", ASCENDING), ("chat_id", ASCENDING)], name="chat")
        self._create_lifecycle_indexes()

    def _shard(self, key: str) -> int:
        return shard_of(key, self.split)

    # -- saving ------------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Nothing: the server checkpoints its own journal."""

    def commit(self, saves: Sequence[NewMessage], confirms: Sequence[Confirm]) -> tuple[list[Saved], list[list[Message]]]:
        """The saves, then the confirms (no transaction: see the module docstring)."""
        saved = self.save_messages(saves) if saves else []
        with translated(self.name):
            return saved, self._confirm_all(confirms)

    def commit_now(self, saves: Sequence[NewMessage],
                   confirms: Sequence[Confirm]) -> tuple[list[Saved], list[list[Message]]] | None:
        """Never: every write is a network round trip (the worker thread does it)."""
        return None

    def save_messages(self, batch: Sequence[NewMessage]) -> list[Saved]:
        """Idempotent per (from_id, cid), results in batch order; see the module docstring."""
        firsts = self._firsts(batch)
        with translated(self.name):
            outcome = self._save_unique([batch[i] for i in firsts.values()])
        results: list[Saved] = []
        for i, item in enumerate(batch):
            key = (item.message.from_id, item.message.cid)
            saved = outcome[key]
            results.append(saved if firsts[key] == i else Saved(saved.message, created=False))
        return results

    def finish_saves(self, batch: Sequence[NewMessage]) -> list[Message]:
        """What a retry of each (from_id, cid) would finish, without claiming any: a message
        without a claim left no trace and stays unsaved. Returns the messages finished."""
        with translated(self.name):
            outcome = self._save_unique([batch[i] for i in self._firsts(batch).values()], take_claims=False)
        return [saved.message for saved in outcome.values() if saved.created]

    @staticmethod
    def _firsts(batch: Sequence[NewMessage]) -> dict[tuple[int, str], int]:
        """The index of each (from_id, cid)'s first save in `batch`, in batch order."""
        firsts: dict[tuple[int, str], int] = {}
        for i, item in enumerate(batch):
            firsts.setdefault((item.message.from_id, item.message.cid), i)
        return firsts

    def _save_unique(self, items: Sequence[NewMessage], take_claims: bool = True) -> dict[tuple[int, str], Saved]:
        """take_claims=False (finish_saves): no claim is inserted, and an item without a stored
        claim is left out of the outcome."""
        claims = [self._claim(item) for item in items]
        refused = insert_new(self._claims, claims) if take_claims else set(range(len(claims)))
        earlier = self._claims_of([items[i].message for i in sorted(refused)])
        intents = self._intents_of([c["_id"] for c in earlier.values() if "message" not in c and "done" not in c])
        stored = self._claimed(earlier.values())
        outcome: dict[tuple[int, str], Saved] = {}
        write: list[Doc] = []  # claims (or intents) whose document is still to write
        rows: list[Doc] = []  # offline rows to write, with their copies
        for i, item in enumerate(items):
            key = (item.message.from_id, item.message.cid)
            claim = claims[i] if i not in refused else earlier.get(key)
            if claim is None and not take_claims:
                continue  # finish_saves: this one left no trace
            if claim is None:
                raise RuntimeError(f"message id {item.message.id} is claimed by another (from_id, cid)")
            found = stored.get(claim["_id"])
            source = claim if "message" in claim else intents.get(claim["_id"])
            if source is None or (found is not None and source is claim):  # done: a repeat
                if found is None:
                    raise RuntimeError(f"message {claim['_id']} is done but missing from its shard")
                outcome[key] = Saved(found, created=False)
                continue
            if found is not None:  # an intent's save that stopped after its document
                outcome[key] = Saved(found, created=True)
                rows.extend(self._rows(source["pending_for"], claim["_id"], claim["shard"], message_doc(found)))
                continue
            outcome[key] = Saved(message_of(source["message"]), created=True)
            write.append({"shard": claim["shard"], "message": source["message"]})
            rows.extend(self._rows(source["pending_for"], claim["_id"], claim["shard"], source["message"]))
        self._write(write, rows)
        if intents:  # every one found was finished above
            self._intents.delete_many({"_id": {"$in": sorted(intents)}})
        return outcome

    def _claim(self, item: NewMessage) -> Doc:
        m = item.message
        return {"_id": m.id, "from_id": m.from_id, "cid": m.cid, "shard": self._shard(m.chat_key),
                "message": message_doc(m), "pending_for": list(dict.fromkeys(item.pending_for))}

    def _intents_of(self, ids: Sequence[int]) -> dict[int, Doc]:
        """The intents of these claims (an older node's: no copy, no `done`), by id; a claim
        without one is done."""
        if not ids:
            return {}
        return {doc["_id"]: doc for doc in self._intents.find({"_id": {"$in": ids}})}

    def _equality_pushed_down(self) -> bool:
        """Whether a retry's lookups go one per (from_id, cid) pair, by equalities (see
        `_claimed`): where the server says it hands such a filter down to its SQL (FerretDB on
        PostgreSQL: `explain`'s `filterPushdown`). Elsewhere one query takes every pair: MongoDB
        serves an `$or` from its indexes, and FerretDB on SQLite pushes no such filter down, so
        each query would read the whole collection."""
        probe = {"find": CLAIMS, "filter": {"cid": "", "from_id": 2**62}}
        try:
            plan = self._db.command("explain", probe, verbosity="queryPlanner")
        except OperationFailure as exc:
            log.warning("mongo_explain_refused", store=self.name, error=str(exc))
            return False
        return plan.get("filterPushdown") is True

    def _claims_of(self, messages: Sequence[Message]) -> dict[tuple[int, str], Doc]:
        """The stored claims of these (from_id, cid) pairs: one query per pair where equalities
        are pushed down (`_claimed`), else one query for all."""
        pairs = list(dict.fromkeys((m.from_id, m.cid) for m in messages))
        if not pairs:
            return {}
        if self._by_pair:
            docs = [self._claims.find_one({"cid": cid, "from_id": from_id}) for from_id, cid in pairs]
            return {(doc["from_id"], doc["cid"]): doc for doc in docs if doc is not None}
        cids: dict[int, list[str]] = defaultdict(list)
        for from_id, cid in pairs:
            cids[from_id].append(cid)
        query = {"$or": [{"from_id": f, "cid": {"$in": c}} for f, c in cids.items()]}
        return {(doc["from_id"], doc["cid"]): doc for doc in self._claims.find(query)}

    def _claimed(self, claims: Iterable[Doc]) -> dict[int, Message]:
        """The stored documents of these claims, by id: one query per claim, by its cid and id,
        where equalities are pushed down (`_by_pair`), else `_fetch`'s one query per shard.

        FerretDB 1.x on PostgreSQL hands a string equality down to SQL, but not an `$or`, an
        `$in` or an id above 2**53: one `$or` of the pairs (`_claims_of`) read every claim, and
        one `$in` of ids (`_fetch`) a whole shard, each decoded by FerretDB, at every retry of
        a send (session 21: 1.2 s with 5,000 messages stored, growing with the history). By
        the cid, PostgreSQL reads the rows and FerretDB decodes the few that match: 7-13 ms."""
        if not self._by_pair:
            return self._fetch((c["_id"], c["shard"]) for c in claims)
        found: dict[int, Message] = {}
        for claim in claims:
            doc = self._shards[claim["shard"]].find_one({"cid": claim["cid"], "_id": claim["_id"]})
            if doc is not None:
                found[doc["_id"]] = message_of(doc)
        return found

    @staticmethod
    def _rows(users: Iterable[int], message_id: int, shard: int, copy: Doc) -> list[Doc]:
        text = pack(copy)
        return [{"user_id": u, "message_id": message_id, "shard": shard, ROW_COPY: text} for u in users]

    def _write(self, finish: Sequence[Doc], rows: Sequence[Doc]) -> None:
        """Steps 2 and 3 of the module docstring: the offline rows first, then the documents
        (`finish`: each {shard, message})."""
        insert_new(self._pending, rows)
        by_shard: dict[int, list[Doc]] = defaultdict(list)
        for item in finish:
            by_shard[item["shard"]].append(item["message"])
        for shard, docs in sorted(by_shard.items()):
            insert_new(self._shards[shard], docs)

    def _messages_of(self, rows: Sequence[Doc]) -> dict[int, Message]:
        """The messages of these offline rows, by id: each row's copy (`message_json`, or an
        older node's `message` document); a row without one (from before copies, or whose copy
        a recall or an erasure dropped), or with both (an older node's recall or erasure set
        fields of a `message` beside the string), is looked up in its shard, and left out while
        its message is not visible."""
        found: dict[int, Message] = {}
        through: list[tuple[int, int]] = []
        for r in rows:
            if ROW_COPY in r and "message" not in r:
                found[r["message_id"]] = message_of(unpack(r[ROW_COPY]))
            elif "message" in r and ROW_COPY not in r:
                found[r["message_id"]] = message_of(r["message"])
            else:  # no copy, or both: an older node's recall or erasure set fields beside the string
                through.append((r["message_id"], r["shard"]))
        found.update(self._fetch(through))
        return found

    def _fetch(self, refs: Iterable[tuple[int, int]]) -> dict[int, Message]:
        """The messages (id, shard) that exist, by id: one query per shard."""
        ids: dict[int, list[int]] = defaultdict(list)
        for message_id, shard in refs:
            ids[shard].append(message_id)
        found: dict[int, Message] = {}
        for shard, wanted in ids.items():
            for doc in self._shards[shard].find({"_id": {"$in": wanted}}):
                found[doc["_id"]] = message_of(doc)
        return found

    # -- offline sets and cursors --------------------------------------------------------------

    def pending(self, user_id: UserId, after: MessageId, limit: int) -> list[Message]:
        """Unconfirmed messages with id > after, oldest first: each row's copy, so a message
        whose save is still running (or was cut off after its rows) may come before history
        shows it; a row from before copies is given once its message is visible."""
        found: list[Message] = []
        with translated(self.name):
            while len(found) < limit:
                want = limit - len(found)
                rows = list(
                    self._pending.find({"user_id": user_id, "message_id": {"$gt": after}})
                    .sort("message_id", ASCENDING)
                    .limit(want)
                )
                messages = self._messages_of(rows)
                found.extend(messages[r["message_id"]] for r in rows if r["message_id"] in messages)
                if len(rows) < want:
                    break
                after = MessageId(rows[-1]["message_id"])
        return found

    def confirm(self, user_id: UserId, ids: Sequence[MessageId]) -> list[Message]:
        """Removes ids from the offline set; returns those that were in it, in `ids` order."""
        with translated(self.name):
            return self._confirm_all([Confirm(user_id, tuple(ids))])[0]

    def _confirm_all(self, confirms: Sequence[Confirm]) -> list[list[Message]]:
        """Every confirm of a group commit in one find (the rows' copies) and one delete. An id
        confirmed twice in the batch counts for the first. A row from before copies existed
        whose message is not yet visible (an unfinished save) stays."""
        wanted: dict[int, set[int]] = defaultdict(set)
        for c in confirms:
            wanted[c.user_id].update(c.ids)
        if not any(wanted.values()):
            return [[] for _ in confirms]
        either = [{"user_id": u, "message_id": {"$in": sorted(ids)}} for u, ids in wanted.items() if ids]
        query = either[0] if len(either) == 1 else {"$or": either}
        rows = list(self._pending.find(query, {"user_id": 1, "message_id": 1, "shard": 1, "message": 1, ROW_COPY: 1}))
        messages = self._messages_of(rows)
        held: dict[int, set[int]] = defaultdict(set)
        for r in rows:
            if r["message_id"] in messages:
                held[r["user_id"]].add(r["message_id"])
        if held:
            gone = [{"user_id": u, "message_id": {"$in": sorted(ids)}} for u, ids in held.items()]
            self._pending.delete_many(gone[0] if len(gone) == 1 else {"$or": gone})
        results: list[list[Message]] = []
        for c in confirms:
            mine = held[c.user_id]
            results.append([messages[i] for i in dict.fromkeys(c.ids) if i in mine])
            mine.difference_update(c.ids)
        return results

    def group_messages_after(self, cursors: dict[GroupId, int], after: MessageId, limit: int) -> list[Message]:
        """Each group's messages with timestamp > its cursor and id > after, oldest first."""
        found: list[Message] = []
        if limit <= 0:
            return found
        with translated(self.name):
            for group_id, cursor in cursors.items():
                key = chat_key(ChatType.GROUP, 0, group_id)
                docs = (
                    self._shards[self._shard(key)]
                    .find({"chat_key": key, "_id": {"$gt": after}, "timestamp": {"$gt": cursor}})
                    .sort("_id", ASCENDING)
                    .limit(limit)
                )
                found.extend(message_of(d) for d in docs)
        found.sort(key=lambda m: m.id)
        return found[:limit]

    def set_read_cursor(self, user_id: UserId, chat_type: ChatType, chat_id: int, timestamp: int) -> int:
        """Moves the cursor forward only ($max); returns the cursor now stored."""
        query = {"_id": f"{user_id}:{chat_type.value}:{chat_id}"}
        update = {
            "$max": {"timestamp": timestamp},
            "$setOnInsert": {"user_id": user_id, "chat_type": chat_type.value, "chat_id": chat_id},
        }
        with translated(self.name):
            try:
                doc = self._cursors.find_one_and_update(
                    query, update, upsert=True, return_document=ReturnDocument.AFTER
                )
            except DuplicateKeyError:  # a concurrent upsert inserted it first: now it exists
                doc = self._cursors.find_one_and_update(query, update, return_document=ReturnDocument.AFTER)
        assert doc is not None  # upserted, or updated after a concurrent upsert
        return int(doc["timestamp"])

    def read_cursors(self, user_id: UserId) -> list[ReadCursor]:
        with translated(self.name):
            docs = list(self._cursors.find({"user_id": user_id}))
        cursors = [ReadCursor(ChatType(d["chat_type"]), d["chat_id"], d["timestamp"]) for d in docs]
        return sorted(cursors, key=lambda c: (c.chat_type.value, c.chat_id))

    def pending_among(self, user_id: UserId, ids: Sequence[MessageId]) -> set[MessageId]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return set()
        with translated(self.name):
            rows = self._pending.find({"user_id": user_id, "message_id": {"$in": wanted}}, {"message_id": 1})
            return {MessageId(r["message_id"]) for r in rows}

    def group_cursors(self, group_id: GroupId) -> dict[UserId, int]:
        with translated(self.name):
            docs = self._cursors.find({"chat_type": ChatType.GROUP.value, "chat_id": group_id})
            return {UserId(d["user_id"]): int(d["timestamp"]) for d in docs}

    def unread_counts(self, user_id: UserId, cursors: dict[str, int]) -> dict[str, int]:
        """One aggregation per shard (and per UNREAD_CHUNK chats) of the chats asked for."""
        by_shard: dict[int, list[tuple[str, int]]] = defaultdict(list)
        for key, cursor in cursors.items():
            by_shard[self._shard(key)].append((key, cursor))
        counts: dict[str, int] = {}
        with translated(self.name):
            for shard, chats in sorted(by_shard.items()):
                for start in range(0, len(chats), UNREAD_CHUNK):
                    chunk = chats[start : start + UNREAD_CHUNK]
                    match: Doc = {"$or": [{"chat_key": k, "timestamp": {"$gt": c}} for k, c in chunk],
                             "from_id": {"$ne": user_id}}
                    pipeline: list[Doc] = [{"$match": match}, {"$group": {"_id": "$chat_key", "n": {"$sum": 1}}}]
                    counts.update((d["_id"], int(d["n"])) for d in self._shards[shard].aggregate(pipeline))
        return counts

    # -- history and single messages -----------------------------------------------------------

    def history(self, chat_key: str, before: MessageId | None, limit: int) -> tuple[list[Message], bool]:
        """Up to `limit` messages older than `before`, oldest first, and whether more exist."""
        query: Doc = {"chat_key": chat_key}
        if before is not None:
            query["_id"] = {"$lt": before}
        with translated(self.name):
            docs = list(
                self._shards[self._shard(chat_key)].find(query).sort("_id", DESCENDING).limit(limit + 1)
            )
        more = len(docs) > limit
        return [message_of(d) for d in reversed(docs[:limit])], more

    def get(self, message_id: MessageId) -> Message | None:
        with translated(self.name):
            claim = self._claims.find_one({"_id": message_id}, {"shard": 1})
            if claim is None:
                return None
            doc = self._shards[claim["shard"]].find_one({"_id": message_id})
        return message_of(doc) if doc is not None else None

    def recall(self, message_id: MessageId) -> Message:
        """Marks the message recalled (type `recalled`, empty content, no extend), its copies
        first (the offline rows' and the claim's: a failure before the document leaves no copy
        with the content); idempotent."""
        recalled = {"message_type": MessageType.RECALLED.value, "content": "", "extend": None}
        with translated(self.name):
            claim = self._claims.find_one({"_id": message_id}, {"shard": 1, "message._id": 1})
            doc = None
            if claim is not None:
                drop_row_copies(self._pending, {"message_id": message_id}, recalled)
                if "message" in claim:
                    self._claims.update_one({"_id": message_id}, copy_update(recalled))
                doc = self._shards[claim["shard"]].find_one_and_update(
                    {"_id": message_id}, {"$set": recalled}, return_document=ReturnDocument.AFTER
                )
        if doc is None:
            raise NotFound(f"message {message_id}")
        return message_of(doc)

    # -- V-IM's raw frame log (not part of the port) -------------------------------------------

    def log_frames(self, entries: Sequence[FrameLogEntry]) -> None:
        """Appends frames to `message-log-{yyyyMMdd}` (the UTC day of each send_time).

        For the node to call off the hot path (e.g. a background task draining a queue): one
        unordered insert per day touched, acknowledged with the client's write concern. Not
        idempotent (a retry after an error may log a frame twice). Raises StoreUnavailable.
        """
        days: dict[str, list[Doc]] = defaultdict(list)
        for e in entries:
            day = dt.datetime.fromtimestamp(e.send_time / 1000, dt.UTC).strftime("%Y%m%d")
            days[day].append({"content": e.content, "senderId": e.sender_id, "sendTime": e.send_time})
        with translated(self.name):
            for day, docs in sorted(days.items()):
                self._db[f"{LOG_PREFIX}{day}"].insert_many(docs, ordered=False)

    def close(self) -> None:
        self._client.close()
