"""Presence across the cluster (pure): which users the cluster was told are online, and the
net changes to announce since the last announcement.

Rules:
- The master decides presence from its route table (every session of every node): a user is
  online while they have at least one session anywhere.
- Announcements go to every session that has asked for `contacts` (presence keeps that
  snapshot up to date): contacts are every user, so a session that never asks (a bot, a
  benchmark client) is spared the N x N traffic of a large cluster.
- Changes are coalesced: the master announces at most once per window (Tunables.presence_window_s, 0.5 s), and only
  the difference between what it announced last and the route table now. A user who goes
  offline and comes back within one window (a reconnect, a node restart that clients survive
  by reconnecting elsewhere) is announced nothing.
- An announcement is split into frames of at most Tunables.presence_chunk changes: per window each session in
  the cluster gets at most ceil(changes / chunk) `presence` frames (one for up to 500 users).
- A new master announces what it learns as the slaves report their sessions (its board starts
  empty): clients re-read `contacts` whenever they (re)connect, so they need no offline event
  for users who left while no master ran.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import attrs

from ..tunables import DEFAULTS


@attrs.frozen
class Change:
    user: int
    online: bool
    node: str | None  # where the user has a session (online only)


@attrs.define
class PresenceBoard:
    _published: dict[int, str] = attrs.Factory(dict)  # users announced online -> their node

    def changes(self, touched: Iterable[int], node_of: Callable[[int], str | None]) -> list[Change]:
        """The net changes of the touched users since the last call, recorded as announced."""
        found: list[Change] = []
        for user in sorted(set(touched)):
            node, was = node_of(user), self._published.get(user)
            if node is None and was is not None:
                del self._published[user]
                found.append(Change(user, False, None))
            elif node is not None and was is None:
                self._published[user] = node
                found.append(Change(user, True, node))
        return found

    def online(self) -> int:
        return len(self._published)


def chunks(changes: Sequence[Change], size: int = DEFAULTS.presence_chunk) -> Iterator[tuple[Change, ...]]:
    for start in range(0, len(changes), size):
        yield tuple(changes[start : start + size])
