"""Merging id-ordered pages from several sources into one page (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import Message, MessageId


def merge_pages(pages: Sequence[Sequence[Message]], limit: int) -> tuple[list[Message], MessageId | None]:
    """Each page holds a source's smallest ids > some `after`, ascending, at most `limit`.

    Returns the `limit` smallest messages of all that are certainly next, and the bound: the
    smallest last id of a full page (beyond it that source may hold smaller ids than those
    returned), or None when every source is exhausted. An empty result with a bound means
    "continue after the bound". Duplicates (one message in two sources) appear once.
    """
    bounds = [page[-1].id for page in pages if len(page) >= limit]
    bound = min(bounds) if bounds else None
    found = {m.id: m for page in pages for m in page if bound is None or m.id <= bound}
    return [found[i] for i in sorted(found)[:limit]], bound
