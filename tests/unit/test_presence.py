"""Presence decisions (core/presence.py): net changes per window, chunked frames."""

from __future__ import annotations

from vim_cluster.core.presence import Change, PresenceBoard, chunks
from vim_cluster.core.relay import RouteTable
from vim_cluster.protocol.frames import PresenceOut
from vim_cluster.tunables import DEFAULTS


def announce(board: PresenceBoard, routes: RouteTable) -> list[Change]:
    return board.changes(routes.take_touched(), routes.node_of)


def test_first_session_and_last_close_are_announced_once() -> None:
    routes, board = RouteTable(), PresenceBoard()
    routes.add(7, "s-1", "dept-1")
    routes.add(7, "s-2", "dept-2")
    assert announce(board, routes) == [Change(7, True, "dept-1")]
    routes.remove(7, "s-1")
    assert announce(board, routes) == []  # still online on dept-2
    routes.remove(7, "s-2")
    assert announce(board, routes) == [Change(7, False, None)]
    assert announce(board, routes) == []


def test_a_reconnect_within_one_window_announces_nothing() -> None:
    routes, board = RouteTable(), PresenceBoard()
    for user in range(1000):
        routes.add(user, f"s-{user}", "dept-1")
    assert len(announce(board, routes)) == 1000
    assert routes.drop_node("dept-1") == 1000  # the node died...
    for user in range(1000):  # ...and its users reconnected elsewhere before the next window
        routes.add(user, f"t-{user}", "dept-2")
    assert announce(board, routes) == []
    assert board.online() == 1000


def test_a_slave_relinking_with_its_sessions_announces_only_the_difference() -> None:
    routes, board = RouteTable(), PresenceBoard()
    routes.replace_node("dept-1", [(1, "a"), (2, "b")])
    assert announce(board, routes) == [Change(1, True, "dept-1"), Change(2, True, "dept-1")]
    routes.replace_node("dept-1", [(2, "b"), (3, "c")])
    assert announce(board, routes) == [Change(1, False, None), Change(3, True, "dept-1")]


def test_presence_frame_is_flat_for_one_change_and_a_list_for_several() -> None:
    assert PresenceOut((Change(7, True, "dept-1"),)).wire() == {"userId": "7", "online": True, "nodeId": "dept-1"}
    assert PresenceOut((Change(7, False, None), Change(8, True, "m"))).wire() == {"users": [
        {"userId": "7", "online": False}, {"userId": "8", "online": True, "nodeId": "m"}]}


def test_a_big_window_is_split_into_frames_of_at_most_chunk_changes() -> None:
    changes = [Change(n, True, "m") for n in range(2 * DEFAULTS.presence_chunk + 1)]
    assert [len(c) for c in chunks(changes)] == [DEFAULTS.presence_chunk, DEFAULTS.presence_chunk, 1]
