"""The master's routing table and its next-hop decisions (pure).

The table maps each user to their sessions and the node holding each. Slaves report their
sessions over the forward channel (a full list when their link authenticates, then each open
and close), the master adds its own. Redis holds the same routes for recovery and operators;
the hot path only reads this table.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.define
class RouteTable:
    _sessions: dict[int, dict[str, str]] = attrs.Factory(dict)  # user -> session -> node
    _by_node: dict[str, set[tuple[int, str]]] = attrs.Factory(dict)  # node -> {(user, session)}
    _touched: set[int] = attrs.Factory(set)  # users whose sessions changed (for presence)

    def add(self, user: int, session: str, node: str) -> None:
        self.remove(user, session)
        self._touched.add(user)
        self._sessions.setdefault(user, {})[session] = node
        self._by_node.setdefault(node, set()).add((user, session))

    def remove(self, user: int, session: str) -> None:
        sessions = self._sessions.get(user)
        if not sessions or session not in sessions:
            return
        node = sessions.pop(session)
        self._touched.add(user)
        if not sessions:
            del self._sessions[user]
        self._by_node.get(node, set()).discard((user, session))

    def replace_node(self, node: str, sessions: Iterable[tuple[int, str]]) -> None:
        """The node's full list of sessions (after its link authenticated)."""
        self.drop_node(node)
        for user, session in sessions:
            self.add(user, session, node)

    def drop_node(self, node: str) -> int:
        """Forget every session of a node (it died or restarted); returns how many."""
        entries = self._by_node.pop(node, set())
        for user, session in entries:
            self._touched.add(user)
            sessions = self._sessions.get(user)
            if sessions is not None:
                sessions.pop(session, None)
                if not sessions:
                    del self._sessions[user]
        return len(entries)

    def take_touched(self) -> set[int]:
        """The users whose sessions changed since the last call."""
        touched, self._touched = self._touched, set()
        return touched

    def node_of(self, user: int) -> str | None:
        """A node holding a session of the user (the smallest id), None when offline."""
        nodes = self._sessions.get(user)
        return min(nodes.values()) if nodes else None

    def nodes_of(self, user: int) -> set[str]:
        return set(self._sessions.get(user, {}).values())

    def plan(self, users: Iterable[int], skip: str | None) -> dict[str, list[int]]:
        """Which node gets which users: one entry per node holding any of them but `skip`."""
        targets: dict[str, list[int]] = {}
        get = self._sessions.get
        for user in users:
            nodes = get(user)
            if not nodes:
                continue
            if len(nodes) == 1:  # one session: most users, once per member of a group's fan-out
                (node,) = nodes.values()
                if node != skip:
                    found = targets.get(node)
                    if found is None:
                        targets[node] = [user]
                    else:
                        found.append(user)
                continue
            for node in set(nodes.values()):
                if node != skip:
                    targets.setdefault(node, []).append(user)
        return targets

    def sessions_of_node(self, node: str) -> int:
        return len(self._by_node.get(node, ()))
