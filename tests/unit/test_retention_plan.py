"""When the purge is due and what it removes (core/retention.py), with time passed in."""

from __future__ import annotations

import datetime as dt

from vim_cluster.core.retention import DAY_MS, due_day, plan
from vim_cluster.ids import IdGenerator, first_id_at, timestamp_of


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


def test_due_once_per_utc_day_at_or_after_the_hour() -> None:
    assert due_day(ms("2026-03-04T01:59:59"), 2, None) is None
    assert due_day(ms("2026-03-04T02:00:00"), 2, None) == "20260304"
    assert due_day(ms("2026-03-04T23:00:00"), 2, "20260303") == "20260304"  # yesterday's run: due
    assert due_day(ms("2026-03-04T23:00:00"), 2, "20260304") is None  # done today
    assert due_day(ms("2026-03-05T00:30:00"), 0, "20260304") == "20260305"


def test_plan_bounds_by_ids_minted_before_the_cutoff() -> None:
    now = ms("2026-03-04T02:00:00")
    what = plan(now, 30, 7)
    assert what.messages_before is not None and what.pending_before is not None
    assert timestamp_of(what.messages_before) == now - 30 * DAY_MS
    assert timestamp_of(what.pending_before) == now - 7 * DAY_MS
    assert what.logs_before_day == "20260202"  # 30 days back; that day still has younger frames
    minted_just_before = IdGenerator(1023, lambda: now - 30 * DAY_MS - 1).next_id()
    minted_at = IdGenerator(0, lambda: now - 30 * DAY_MS).next_id()
    assert minted_just_before < what.messages_before <= minted_at
    assert first_id_at(0) == 0


def test_no_retention_configured_plans_nothing() -> None:
    what = plan(ms("2026-03-04T02:00:00"), None, None)
    assert what.empty and what.logs_before_day is None
    assert not plan(ms("2026-03-04T02:00:00"), None, 3).empty
