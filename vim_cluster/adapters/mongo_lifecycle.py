"""Retention, export and erasure on the MongoDB message store (the lifecycle ports).

Rules:
- Every query goes through an index: `message_ids._id` (the claims, oldest first across every
  shard), `message_ids.from_id_id`, `pending_messages.message_id`, each shard's `_id` and
  `recipient_id`. No batch scans a collection.
- A purge batch removes, in this order: the offline rows, the chat documents, then the claims.
  The claims drive the next batch, so a crash between steps leaves claims whose rest is
  already gone, and the next batch finds and finishes them (nothing newer is touched).
  Until then `get` of such a message answers None, as after the purge, and a save of the same
  (from_id, cid) (a client resending a message older than the retention) would write it back
  from its claim's copy, for the next batch to remove again.
- Daily raw frame logs `message-log-{yyyyMMdd}` are dropped whole once their day is past.
- Erasing a user's frames in the raw logs scans each daily log (they have no index by
  sender: they are written on the hot path); erasure is a rare operator action.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database

from ..core.paging import merge_pages
from ..model import ChatType, Message, MessageId, MessageType, UserId
from .mongo_base import LOG_PREFIX, copy_update, drop_row_copies, message_of, shard_of, translated

Doc = dict[str, Any]


class MongoLifecycle:
    """Mixed into MongoMessages: MessageRetention, MessageExport and MessageErasure."""

    name: str
    _db: Database[Doc]
    _shards: list[Collection[Doc]]
    _claims: Collection[Doc]
    _intents: Collection[Doc]
    _pending: Collection[Doc]
    _cursors: Collection[Doc]

    def _create_lifecycle_indexes(self) -> None:
        for shard in self._shards:
            shard.create_index([("chat_id", ASCENDING), ("_id", ASCENDING)], name="recipient_id")
        self._claims.create_index([("from_id", ASCENDING), ("_id", ASCENDING)], name="from_id_id")
        self._pending.create_index([("message_id", ASCENDING)], name="message_id")

    # -- retention -----------------------------------------------------------------------------

    def purge_messages(self, before: MessageId, limit: int) -> int:
        with translated(self.name):
            claims = list(
                self._claims.find({"_id": {"$lt": before}}, {"shard": 1}).sort("_id", ASCENDING).limit(limit)
            )
            if not claims:
                return 0
            ids = [c["_id"] for c in claims]
            self._pending.delete_many({"message_id": {"$gte": ids[0], "$lte": ids[-1]}})
            by_shard: dict[int, list[int]] = defaultdict(list)
            for c in claims:
                by_shard[c["shard"]].append(c["_id"])
            for shard, shard_ids in sorted(by_shard.items()):
                self._shards[shard].delete_many({"_id": {"$in": shard_ids}})
            self._claims.delete_many({"_id": {"$in": ids}})
            # Unfinished saves' copies, and those of attempts that never got their claim.
            self._intents.delete_many({"_id": {"$lte": ids[-1]}})
        return len(ids)

    def purge_pending(self, before: MessageId, limit: int) -> int:
        with translated(self.name):
            rows = list(
                self._pending.find({"message_id": {"$lt": before}}, {"_id": 1}).sort("message_id", ASCENDING).limit(limit)
            )
            if not rows:
                return 0
            return int(self._pending.delete_many({"_id": {"$in": [r["_id"] for r in rows]}}).deleted_count)

    def drop_frame_logs(self, before_day: str) -> list[str]:
        with translated(self.name):
            names = sorted(
                n for n in self._db.list_collection_names()
                if n.startswith(LOG_PREFIX) and len(n) == len(LOG_PREFIX) + 8 and n[len(LOG_PREFIX):] < before_day
            )
            for name in names:
                self._db.drop_collection(name)
        return names

    # -- export --------------------------------------------------------------------------------

    def messages_of_user(self, user_id: UserId, after: MessageId, limit: int) -> list[Message]:
        """Sent: through the claims (one index for every shard); received: each shard's
        `recipient_id` index. Each source gives its `limit` smallest ids > after; a full source
        bounds the page at its last id (beyond it that source may hold smaller ids than the
        others), so the merge is exactly the next page."""
        while True:
            page, bound = self._user_page(user_id, after, limit)
            if page or bound is None:
                return page
            after = bound  # every claim of this page had no document (an unfinished save)

    def _user_page(self, user_id: UserId, after: MessageId, limit: int) -> tuple[list[Message], MessageId | None]:
        sent, last_claim = self._sent_page(user_id, after, limit)
        pages = [sent]
        with translated(self.name):
            for collection in self._shards:
                query = {"chat_id": user_id, "_id": {"$gt": after}, "chat_type": ChatType.FRIEND.value}
                pages.append([message_of(d) for d in collection.find(query).sort("_id", ASCENDING).limit(limit)])
        page, bound = merge_pages(pages, limit)
        if last_claim is not None and last_claim < (bound if bound is not None else last_claim + 1):
            bound = last_claim  # a full page of claims bounds even if some had no document
            page = [m for m in page if m.id <= bound]
        return page, bound

    def _sent_page(self, user_id: UserId, after: MessageId, limit: int) -> tuple[list[Message], MessageId | None]:
        """The messages of `user_id`'s next `limit` claims after `after` (the from_id_id index;
        a claim without a document, an unfinished save, gives none), and the last claim's id
        if there were `limit` of them (more may follow), else None."""
        with translated(self.name):
            claims = list(
                self._claims.find({"from_id": user_id, "_id": {"$gt": after}}, {"shard": 1})
                .sort("_id", ASCENDING).limit(limit)
            )
            by_shard: dict[int, list[int]] = defaultdict(list)
            for c in claims:
                by_shard[c["shard"]].append(c["_id"])
            found: dict[int, Message] = {}
            for shard, ids in by_shard.items():
                for doc in self._shards[shard].find({"_id": {"$in": ids}}):
                    found[doc["_id"]] = message_of(doc)
        sent = [found[c["_id"]] for c in claims if c["_id"] in found]
        return sent, (MessageId(claims[-1]["_id"]) if claims and len(claims) >= limit else None)

    def sent_after(self, user_id: UserId, after: MessageId, limit: int) -> list[Message]:
        """The MessageStore port's (ports.py): pages of claims until `limit` messages or the
        last claim (claims without a document would otherwise end the page early)."""
        sent: list[Message] = []
        while len(sent) < limit:
            page, last = self._sent_page(user_id, after, limit - len(sent))
            sent += page
            if last is None:
                break
            after = last
        return sent

    def messages_of_chat(self, chat_key: str, after: MessageId, limit: int) -> list[Message]:
        collection = self._shards[shard_of(chat_key, len(self._shards))]
        with translated(self.name):
            docs = collection.find({"chat_key": chat_key, "_id": {"$gt": after}}).sort("_id", ASCENDING).limit(limit)
            return [message_of(d) for d in docs]

    # -- erasure -------------------------------------------------------------------------------

    def erase_sent(self, user_id: UserId, after: MessageId, limit: int) -> list[MessageId]:
        placeholder = {"message_type": MessageType.DELETED.value, "content": "", "extend": None}
        with translated(self.name):
            claims = list(
                self._claims.find({"from_id": user_id, "_id": {"$gt": after}}, {"shard": 1, "message._id": 1})
                .sort("_id", ASCENDING).limit(limit)
            )
            if not claims:
                return []
            copy = copy_update(placeholder)
            ids = [c["_id"] for c in claims]
            # The copies first (the offline rows', the claims', an older node's intents): a
            # failure before the documents leaves no copy with the content that a retry of an
            # unfinished save could write back (the next call, from the same `after`, erases
            # the rest).
            drop_row_copies(self._pending, {"message_id": {"$in": ids}}, placeholder)
            kept = [c["_id"] for c in claims if "message" in c]
            if kept:
                self._claims.update_many({"_id": {"$in": kept}}, copy)
            self._intents.update_many({"_id": {"$in": ids}}, copy)
            by_shard: dict[int, list[int]] = defaultdict(list)
            for c in claims:
                by_shard[c["shard"]].append(c["_id"])
            for shard, shard_ids in sorted(by_shard.items()):
                self._shards[shard].update_many({"_id": {"$in": shard_ids}}, {"$set": placeholder})
        return [MessageId(c["_id"]) for c in claims]

    def forget_user(self, user_id: UserId) -> int:
        with translated(self.name):
            removed = self._pending.delete_many({"user_id": user_id}).deleted_count
            self._cursors.delete_many({"user_id": user_id})
            for name in self._db.list_collection_names():
                if name.startswith(LOG_PREFIX):
                    self._db[name].delete_many({"senderId": user_id})
        return int(removed)
