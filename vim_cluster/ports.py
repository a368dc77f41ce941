"""The narrow ports between the node shell and its backends, with their guarantees.

Every method is blocking (adapters wrap blocking clients); the node shell calls them through
`node.blocking.BlockingRunner` in worker threads, except the two that never wait and run on the
event loop (`MessageStore.commit_now`, `Directory.cached_group`). Every adapter raises
`StoreUnavailable` when its server cannot be reached or fails, and never anything else for an
outage.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import attrs

from .core.lease import BeatReport, Generation
from .core.mastership import MasterView, Renewal
from .errors import ClientError, ErrorKind
from .model import (
    ChatType,
    Department,
    Group,
    GroupId,
    Message,
    MessageId,
    ReadCursor,
    User,
    UserId,
)


class Directory(Protocol):
    """Users, groups, group members and departments."""

    def create_user(self, user: User) -> None:
        """Durable when it returns. Raises Conflict if a user with the same username key
        exists (`core.usernames.key`: NFKC, then casefold; unique in the store)."""

    def user_by_username(self, username: str) -> User | None:
        """Lookup by the username key: any spelling with the same key finds the user."""

    def users_by_id(self, ids: Iterable[UserId]) -> dict[UserId, User]:
        """The users among `ids` that exist."""

    def all_users(self) -> list[User]:
        """Every user, ordered by id."""

    def set_password_hash(self, user_id: UserId, password_hash: str) -> None:
        """Replaces the user's password hash; durable when it returns. Raises NotFound."""

    def create_group(self, group: Group, quota: GroupQuota | None = None) -> None:
        """Creates the group and its members in one transaction. With a `quota`, first counts
        the groups its owner owns, in the transaction and serialized per owner (two creates at
        once cannot pass it together), and raises ClientError (`over_quota`) with nothing
        created when one more would exceed it."""

    def group(self, group_id: GroupId) -> Group | None:
        """The group with its members (ordered by id), or None."""

    def cached_group(self, group_id: GroupId) -> Group | None:
        """What `group` would return, if the adapter knows it without waiting for a lock or
        the network (it is called on the node's event loop) and knows that nothing has changed
        it since; None if not (then ask `group`). Never stale: SQLite keeps the groups it read
        until any commit to its file; MySQL never knows (every read is a round trip)."""

    def change_members(self, group_id: GroupId, add: Sequence[UserId], remove: Sequence[UserId],
                       most: int | None = None) -> Group:
        """Adds and removes members in one transaction; idempotent. Raises NotFound, and
        ClientError(invalid) with nothing changed when the group would have more than `most`
        members (counted in the transaction: two changes at once cannot pass it together)."""

    def groups_of(self, user_id: UserId) -> list[Group]:
        """Every group `user_id` is a member of, ordered by id."""

    def create_department(self, department: Department) -> None:
        """Durable when it returns. Raises Conflict if the id exists, NotFound if the parent
        does not exist."""

    def departments(self) -> list[Department]:
        """Every department, ordered by id (members: `User.department_id`)."""

    def close(self) -> None: ...


@attrs.frozen
class NewMessage:
    """A message to store, with the users whose offline set it joins (friend recipients)."""

    message: Message
    pending_for: tuple[UserId, ...]


@attrs.frozen
class Saved:
    message: Message  # the stored message: the earlier one when the (from_id, cid) existed
    created: bool


@attrs.frozen
class Confirm:
    """A `received` frame: `user_id` got these messages; drop them from its offline set."""

    user_id: UserId
    ids: tuple[MessageId, ...]


class MessageStore(Protocol):
    """Chat messages, offline (unconfirmed) sets and read cursors."""

    # Whether `commit_now` can ever commit (SQLite: when no other writer holds the file's
    # lock); False: it always returns None (MongoDB: every write is a network round trip).
    commits_inline: bool
    # Whether a failed `commit` wrote nothing (SQLite: one transaction). False: it may have
    # left some of its saves half done (MongoDB without transactions), for `finish_saves`.
    commits_atomic: bool
    # Whether the node's store writer calls `checkpoint` in a worker thread after commits
    # (SQLite with `vim.store.sync: normal`: the WAL is copied into the database file there,
    # not inside a commit).
    checkpoints: bool

    def commit(self, saves: Sequence[NewMessage], confirms: Sequence[Confirm]) -> tuple[list[Saved], list[list[Message]]]:
        """One group commit: `save_messages(saves)`, then `confirm` for each of `confirms`, in
        one write (one transaction where the store has them). Durable when it returns. Returns
        the saves' results in order and, per confirm, the messages it removed (as `confirm`)."""

    def commit_now(self, saves: Sequence[NewMessage],
                   confirms: Sequence[Confirm]) -> tuple[list[Saved], list[list[Message]]] | None:
        """`commit`, if it can run without waiting for a lock, another process or the network
        (it is called on the node's event loop); None, having done nothing, if it cannot."""

    def checkpoint(self) -> None:
        """Moves what commits wrote to a log into the store's main file, off the commit path
        (a worker thread; commits go on meanwhile). Only where `checkpoints`."""

    def save_messages(self, batch: Sequence[NewMessage]) -> list[Saved]:
        """Durable when it returns (all of the batch or, on error, none of it).

        Idempotent per (from_id, cid): a repeat returns the stored message with created=False
        and adds nothing to any offline set. Results are in the order of `batch`.
        """

    def finish_saves(self, batch: Sequence[NewMessage]) -> list[Message]:
        """Completes what a failed `commit` left half done of these saves, as a retry of the
        same (from_id, cid) would: a message begun but not complete (its id taken, perhaps in
        offline sets, not yet in history) is completed under its first id; one that left no
        trace stays unsaved, as its sender was told. Idempotent. Returns the messages it
        completed (none where `commits_atomic`)."""

    def pending(self, user_id: UserId, after: MessageId, limit: int) -> list[Message]:
        """Unconfirmed messages for `user_id` with id > after, oldest first."""

    def confirm(self, user_id: UserId, ids: Sequence[MessageId]) -> list[Message]:
        """Removes ids from the offline set; returns those that were in it. Idempotent."""

    def group_messages_after(
        self, cursors: dict[GroupId, int], after: MessageId, limit: int
    ) -> list[Message]:
        """Messages of each group newer than its cursor (ms) with id > after, oldest first."""

    def sent_after(self, user_id: UserId, after: MessageId, limit: int) -> list[Message]:
        """Messages `user_id` sent (to friends and groups) with id > after, oldest first, at
        most `limit`: fewer only when there are no more (the catch-up's copies for a sender's
        other devices, node/catch_up.py)."""

    def set_read_cursor(self, user_id: UserId, chat_type: ChatType, chat_id: int, timestamp: int) -> int:
        """Moves the cursor forward only; returns the cursor now stored."""

    def read_cursors(self, user_id: UserId) -> list[ReadCursor]: ...

    def pending_among(self, user_id: UserId, ids: Sequence[MessageId]) -> set[MessageId]:
        """Which of `ids` are still in `user_id`'s offline set (not yet confirmed delivered)."""

    def group_cursors(self, group_id: GroupId) -> dict[UserId, int]:
        """Every user's read cursor (ms) on the group, by user."""

    def unread_counts(self, user_id: UserId, cursors: dict[str, int]) -> dict[str, int]:
        """For each chat key, how many of its messages not sent by `user_id` have a timestamp
        after the given cursor (ms); chats with none are left out."""

    def history(self, chat_key: str, before: MessageId | None, limit: int) -> tuple[list[Message], bool]:
        """Up to `limit` messages older than `before`, oldest first, and whether more exist."""

    def get(self, message_id: MessageId) -> Message | None: ...

    def recall(self, message_id: MessageId) -> Message:
        """Marks the message recalled (type `recalled`, empty content); idempotent."""

    def close(self) -> None: ...


@attrs.frozen
class Route:
    """Where one session of a user lives."""

    session_id: str
    node_id: str
    client: str
    uuid: str | None


@attrs.frozen
class NodeInfo:
    node_id: str
    role: str
    client_url: str
    forward_url: str | None
    http_url: str | None
    pid: int
    version: str
    started_at: int
    connections: int
    heartbeat_at: int  # ms
    messages: int = 0  # chat messages accepted since start
    alive: bool = True
    draining: bool = False  # an operator drained it (or it is stopping): it takes no new clients


class NodeLeases(Protocol):
    """Node registrations in Redis: the node-id lock, the worker id, the heartbeat that renews
    them, and the list of live nodes."""

    def acquire_node(self, info: NodeInfo, owner: str, ttl_s: int, replacing: str | None = None) -> bool:
        """Takes the node-id lock and registers; False if another process holds the id
        (unless its owner token is `replacing`: a process known to be dead)."""

    def node_owner(self, node_id: str) -> str | None:
        """The owner token holding the node-id lock, if any."""

    def heartbeat(self, info: NodeInfo, owner: str, ttl_s: int, worker: int | None) -> BeatReport:
        """Renews the node lock and the worker id, each re-taken if it is simply missing, and
        the registration; reports each key's state and the Redis generation (core/lease.py)."""

    def release_node(self, node_id: str, owner: str, worker: int | None = None) -> None:
        """Drops the worker id, the locks, and this node's routes (compare-and-delete)."""

    def lease_worker(self, node_id: str, owner: str, ttl_s: int, prefer: int | None = None) -> tuple[int, Generation]:
        """Takes a free worker id (0..1023; from `prefer` on, if given) for this owner, renewed
        by `heartbeat`; with the Redis generation it was taken in."""

    def nodes(self) -> list[NodeInfo]:
        """Every registered node whose lease has not lapsed."""

    def ping(self) -> None:
        """Raises StoreUnavailable if Redis does not answer."""


class MasterLock(Protocol):
    """The master lease (core/mastership.py): one ACTIVE master among the master-capable nodes."""

    def claim_master(self, node_id: str, owner: str, forward_url: str, ttl_ms: int, floor: int,
                     replacing: str | None = None) -> int | None:
        """Takes the master lease only if no one holds it (a holder's must lapse first; only a
        dead process of this very node id, owner token `replacing`, is replaced at once), raises
        the fencing epoch above the counter and `floor`, and publishes the master (node, forward
        URL, epoch, when, takeovers + 1). Returns the new epoch, or None if the lease is held."""

    def renew_master(self, node_id: str, owner: str, epoch: int, ttl_ms: int) -> Renewal:
        """Renews the lease if it is still ours at `epoch`; says MISSING or OTHER otherwise."""

    def release_master(self, node_id: str, owner: str) -> None:
        """Gives the lease up if it is ours (a standby claims it at its next try)."""

    def active_master(self) -> MasterView | None:
        """The master that last claimed the lease (`alive` while its lease holds), or None."""


class UserRoutes(Protocol):
    """Where each user's sessions live: one route per session, only on live nodes."""

    def add_route(self, user_id: UserId, route: Route) -> list[Route]:
        """Adds the route; returns the user's routes (on live nodes) from before it, read in
        the same transaction: of two sessions opening at once, the later sees the earlier."""

    def remove_route(self, user_id: UserId, session_id: str) -> None:
        """Removes exactly that session's route; a newer session's route stays."""

    def routes(self, user_ids: Iterable[UserId]) -> dict[UserId, list[Route]]:
        """Routes of the users, only those on live nodes."""

    def online(self, user_ids: Iterable[UserId]) -> set[UserId]:
        """The users among `user_ids` with a route on a live node: the users `routes` gives
        routes for, without reading the routes (`contacts` asks it of the whole directory)."""

    def republish_routes(self, routes: Sequence[tuple[UserId, Route]]) -> None:
        """Adds these routes again (a node's live sessions, after Redis lost them)."""

    def purge_routes(self, node_id: str) -> int:
        """Removes every route of `node_id` (stopped or dead); returns how many."""


class LoginFailures(Protocol):
    """Failed-login counters (core.lockout decides the limits)."""

    def reserve_login(self, username: str, address: str, window_s: int, limits: tuple[int, int, int]) -> int:
        """Atomically counts a login attempt as a failure before its password is checked, for
        the (username key, address) pair, the username key and the address, each in a window
        of `window_s` from its first attempt. Returns 0 if it was counted; 1, 2 or 3 (and
        counts nothing) if the pair's, the username's or the address's counter had reached its
        limit in `limits` (core.lockout). Parallel calls are counted one by one."""

    def refund_login(self, username: str, address: str) -> None:
        """The reserved attempt was right: clears the pair's count and takes this attempt back
        from the username's and the address's."""

    def reserve_register(self, address: str, window_s: int, limit: int) -> bool:
        """Atomically counts a `register` from `address` in a window of `window_s` from its
        first; False (nothing counted) once `limit` were counted in the window."""


class Registry(NodeLeases, MasterLock, UserRoutes, LoginFailures, Protocol):
    """Cluster state in Redis, every port above in one: what the node's context holds and the
    one adapter (adapters/redis_registry.py) implements. A consumer that needs one concern
    takes that port."""


@attrs.frozen
class GroupQuota:
    """What one owner may create (docs/protocol.md §2.6): at most `per_window` groups with an id
    from `since` on (ids are time-ordered: the groups created since that time), and at most
    `owned` groups owned in all."""

    since: GroupId
    per_window: int
    window_s: int  # the window's length, for the error's detail
    owned: int


def over_quota(quota: GroupQuota, owned: int, recent: int) -> None:
    """Raises when an owner of `owned` groups, `recent` of them created within the quota's
    window, may create no more: `rate-limited` for the window, `forbidden` for the total."""
    if owned >= quota.owned:
        raise ClientError(ErrorKind.FORBIDDEN, f"you own {owned} groups: at most {quota.owned} may be created")
    if recent >= quota.per_window:
        raise ClientError(ErrorKind.RATE_LIMITED, f"at most {quota.per_window} groups may be created in "
                                                  f"{quota.window_s // 60} minutes: try again later")


def too_many(group: Group, most: int | None) -> None:
    """Raises ClientError(invalid) when `group` has more than `most` members (a directory's
    change_members, inside its transaction)."""
    if most is not None and len(group.members) > most:
        raise ClientError(ErrorKind.INVALID, f"a group has at most {most} members")
