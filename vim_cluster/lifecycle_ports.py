"""The data-lifecycle ports: retention, export and erasure (docs/data-lifecycle.md).

Each is a Protocol of its own beside the hot-path ports in `ports.py`, so the message path never
grows with them. Every method is blocking and bounded (one batch of at most `limit` rows), and
resumable: a call that fails or is interrupted leaves the store consistent, and the next call
carries on where the last committed batch ended. Outages raise StoreUnavailable.

Time bounds are message ids: snowflake ids are time-ordered (`ids.first_id_at(ms)`), so "older
than a day" is an id range on the primary key, which every backend indexes.
"""

from __future__ import annotations

from typing import Protocol

from .model import Message, MessageId, UserId
from .ports import Directory, MessageStore, Registry


class MessageRetention(Protocol):
    """What the nightly purge removes."""

    def purge_messages(self, before: MessageId, limit: int) -> int:
        """Removes up to `limit` of the oldest messages with id < before, with their offline
        rows; returns how many were removed (0: nothing older is left). Each call commits
        on its own; a crash between calls loses nothing newer than `before`."""

    def purge_pending(self, before: MessageId, limit: int) -> int:
        """Removes up to `limit` offline (unconfirmed) rows of messages with id < before; the
        messages themselves stay in history. Returns how many rows went."""

    def drop_frame_logs(self, before_day: str) -> list[str]:
        """Drops whole daily raw frame logs (`message-log-{yyyyMMdd}`) of days < before_day
        (yyyyMMdd); returns their names. A store without frame logs returns []."""


class MessageExport(Protocol):
    """Pages of messages for `vim-cluster export`, in id order; import uses `save_messages`."""

    def messages_of_user(self, user_id: UserId, after: MessageId, limit: int) -> list[Message]:
        """Messages with id > after that `user_id` sent, or that were sent to `user_id` in a
        friend chat; oldest first, at most `limit`."""

    def messages_of_chat(self, chat_key: str, after: MessageId, limit: int) -> list[Message]:
        """Messages of one conversation with id > after, oldest first, at most `limit`."""


class MessageErasure(Protocol):
    """What `vim-cluster user delete --erase` removes from the message store."""

    def erase_sent(self, user_id: UserId, after: MessageId, limit: int) -> list[MessageId]:
        """Turns the first `limit` messages sent by `user_id` with id > after into placeholders
        (type `deleted`, empty content, no extend; id, chat, sender and time stay). Returns
        their ids, ascending ([] when none is left). Idempotent."""

    def forget_user(self, user_id: UserId) -> int:
        """Removes the user's own state: offline rows waiting for them, read cursors, and
        their frames in the raw frame logs. Returns the offline rows removed. Idempotent."""


class UserRemoval(Protocol):
    """The directory side of `vim-cluster user delete`."""

    def delete_user(self, user_id: UserId) -> bool:
        """Removes the account and its group memberships in one transaction; a group the
        user owned passes to its member with the smallest id, or is deleted when no member is
        left. Returns False if there was no such user. Idempotent."""


class LifecycleStore(MessageStore, MessageRetention, MessageExport, MessageErasure, Protocol):
    """A message store with every lifecycle port (both adapters are one)."""


class DutyLock(Protocol):
    """Cluster-wide duties in Redis: one node at a time runs one (a lock with a TTL, renewed
    while it works); a finished run leaves a stamp so the next node skips it."""

    def acquire_duty(self, duty: str, owner: str, ttl_s: int) -> bool:
        """True if `owner` now holds the lock (free, lapsed, or already its own)."""

    def renew_duty(self, duty: str, owner: str, ttl_s: int) -> bool:
        """False if another owner holds the lock now (stop working then); a lapsed, free lock
        is taken again."""

    def release_duty(self, duty: str, owner: str) -> None:
        """Compare-and-delete: releases only `owner`'s lock."""

    def duty_done(self, duty: str) -> str | None:
        """The stamp of the last finished run, if any."""

    def mark_duty_done(self, duty: str, stamp: str) -> None: ...

    def forget_user(self, user_id: UserId) -> int:
        """Removes every route of the user (erasure); returns how many."""


class ClusterRegistry(Registry, DutyLock, Protocol):
    """The Redis registry with its duty locks (one adapter is both)."""

    def close(self) -> None: ...


class UserDirectory(Directory, UserRemoval, Protocol):
    """A directory that can remove users (both adapters are one)."""
