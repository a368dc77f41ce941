"""merge_pages: the next page of several id-ordered sources, never skipping an id."""

from __future__ import annotations

from vim_cluster.core.paging import merge_pages
from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId


def m(i: int) -> Message:
    return Message(MessageId(i), f"c{i}", UserId(1), 2, ChatType.FRIEND, MessageType.TEXT, "", None, i)


def test_a_full_source_bounds_the_page_so_no_id_is_skipped() -> None:
    # source A's next ids are 1, 2 (full page of 2: it may hold 3, 4 next); B holds 5.
    page, bound = merge_pages([[m(1), m(2)], [m(5)]], 2)
    assert [x.id for x in page] == [1, 2] and bound == 2
    page, bound = merge_pages([[m(3), m(4)], []], 2)  # the next call, after 2
    assert [x.id for x in page] == [3, 4] and bound == 4


def test_exhausted_sources_give_the_smallest_ids_and_no_bound() -> None:
    page, bound = merge_pages([[m(2), m(9)], [m(1), m(2)], []], 3)
    assert [x.id for x in page] == [1, 2, 9] and bound is None


def test_the_page_never_exceeds_the_limit() -> None:
    page, bound = merge_pages([[m(1), m(3), m(5)], [m(2), m(4), m(6)]], 3)
    assert [x.id for x in page] == [1, 2, 3] and bound == 5
